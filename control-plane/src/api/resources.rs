//! The resource table: every served resource with its group/version/kind, scope, names and
//! subresources. Routing, discovery, OpenAPI and storage keys are all driven from here.

#[derive(Debug)]
pub struct ResourceDef {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources served besides the object itself.
    pub subresources: &'static [&'static str],
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

macro_rules! res {
    ($g:expr, $v:expr, $plural:expr, $singular:expr, $kind:expr, $ns:expr, $short:expr, $cat:expr, $sub:expr) => {
        ResourceDef {
            group: $g,
            version: $v,
            plural: $plural,
            singular: $singular,
            kind: $kind,
            namespaced: $ns,
            short_names: $short,
            categories: $cat,
            subresources: $sub,
        }
    };
}

pub static RESOURCES: &[ResourceDef] = &[
    res!("", "v1", "namespaces", "namespace", "Namespace", false, &["ns"], NONE, &["status", "finalize"]),
    res!(
        "",
        "v1",
        "pods",
        "pod",
        "Pod",
        true,
        &["po"],
        ALL,
        &["status", "binding", "eviction", "log", "exec", "attach", "portforward"]
    ),
    res!("", "v1", "nodes", "node", "Node", false, &["no"], NONE, &["status"]),
    res!("", "v1", "configmaps", "configmap", "ConfigMap", true, &["cm"], NONE, NONE),
    res!("", "v1", "secrets", "secret", "Secret", true, NONE, NONE, NONE),
    res!("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", true, &["sa"], NONE, &["token"]),
    res!("", "v1", "services", "service", "Service", true, &["svc"], ALL, &["status"]),
    res!("", "v1", "endpoints", "endpoints", "Endpoints", true, &["ep"], NONE, NONE),
    res!("", "v1", "events", "event", "Event", true, &["ev"], NONE, NONE),
    res!("coordination.k8s.io", "v1", "leases", "lease", "Lease", true, NONE, NONE, NONE),
    res!("apps", "v1", "deployments", "deployment", "Deployment", true, &["deploy"], ALL, &["status", "scale"]),
    res!("apps", "v1", "replicasets", "replicaset", "ReplicaSet", true, &["rs"], ALL, &["status", "scale"]),
    res!("apps", "v1", "daemonsets", "daemonset", "DaemonSet", true, &["ds"], ALL, &["status"]),
    res!("apps", "v1", "controllerrevisions", "controllerrevision", "ControllerRevision", true, NONE, NONE, NONE),
    res!("batch", "v1", "jobs", "job", "Job", true, NONE, ALL, &["status"]),
    res!("authentication.k8s.io", "v1", "tokenreviews", "tokenreview", "TokenReview", false, NONE, NONE, NONE),
    res!(
        "authorization.k8s.io",
        "v1",
        "subjectaccessreviews",
        "subjectaccessreview",
        "SubjectAccessReview",
        false,
        NONE,
        NONE,
        NONE
    ),
    res!(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        "SelfSubjectAccessReview",
        false,
        NONE,
        NONE,
        NONE
    ),
    res!("rbac.authorization.k8s.io", "v1", "clusterroles", "clusterrole", "ClusterRole", false, NONE, NONE, NONE),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
        NONE,
        NONE,
        NONE
    ),
    res!(
        "certificates.k8s.io",
        "v1",
        "certificatesigningrequests",
        "certificatesigningrequest",
        "CertificateSigningRequest",
        false,
        &["csr"],
        NONE,
        &["status", "approval"]
    ),
];

/// Groups in discovery order (core first).
pub const GROUPS: &[(&str, &str)] = &[
    ("", "v1"),
    ("apps", "v1"),
    ("authentication.k8s.io", "v1"),
    ("authorization.k8s.io", "v1"),
    ("batch", "v1"),
    ("certificates.k8s.io", "v1"),
    ("coordination.k8s.io", "v1"),
    ("rbac.authorization.k8s.io", "v1"),
];

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn group_dir(&self) -> &'static str {
        if self.group.is_empty() {
            "core"
        } else {
            self.group
        }
    }

    /// Storage key of one object.
    pub fn key(&self, ns: Option<&str>, name: &str) -> String {
        match (self.namespaced, ns) {
            (true, Some(ns)) => format!("/registry/{}/{}/{}/{}", self.group_dir(), self.plural, ns, name),
            _ => format!("/registry/{}/{}/{}", self.group_dir(), self.plural, name),
        }
    }

    /// Storage prefix of a collection (one namespace, or all).
    pub fn prefix(&self, ns: Option<&str>) -> String {
        match (self.namespaced, ns) {
            (true, Some(ns)) => format!("/registry/{}/{}/{}/", self.group_dir(), self.plural, ns),
            _ => format!("/registry/{}/{}/", self.group_dir(), self.plural),
        }
    }

    /// Whether the main resource ignores `status` on update (it has a status subresource).
    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }

    /// Whether objects of this kind are never stored (reviews answered on create).
    pub fn is_virtual(&self) -> bool {
        self.kind.ends_with("Review")
    }

    pub fn verbs(&self) -> &'static [&'static str] {
        if self.is_virtual() {
            return &["create"];
        }
        &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    }
}

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn by_kind(kind: &str) -> &'static ResourceDef {
    RESOURCES.iter().find(|r| r.kind == kind).unwrap_or_else(|| panic!("kind {kind} is not in the resource table"))
}
