//! The container's uid, gid and additional gids: CRI run_as_user / run_as_username /
//! run_as_group / supplemental groups and the image's `User`, resolved against the image's
//! /etc/passwd and /etc/group (parsed here, read by the caller).

use std::collections::BTreeSet;

use berth_proto::runtime::v1::{LinuxContainerSecurityContext, SupplementalGroupsPolicy};

use super::{Ctx, SpecError};

/// One /etc/passwd line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// One /etc/group line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The image's users and groups (empty when the image has no /etc/passwd or /etc/group).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserDb {
    pub passwd: Vec<PasswdEntry>,
    pub groups: Vec<GroupEntry>,
}

impl UserDb {
    /// Parses the contents of /etc/passwd and /etc/group (either may be empty).
    pub fn parse(passwd: &str, group: &str) -> Self {
        UserDb { passwd: parse_passwd(passwd), groups: parse_group(group) }
    }

    fn user_by_name(&self, name: &str) -> Option<&PasswdEntry> {
        self.passwd.iter().find(|u| u.name == name)
    }

    fn user_by_uid(&self, uid: u32) -> Option<&PasswdEntry> {
        self.passwd.iter().find(|u| u.uid == uid)
    }

    fn group_by_name(&self, name: &str) -> Option<&GroupEntry> {
        self.groups.iter().find(|g| g.name == name)
    }
}

/// Parses /etc/passwd (`name:password:uid:gid:gecos:home:shell`); comments, NIS `+`/`-` entries
/// and lines without numeric ids are skipped, as libc does.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('+') || line.starts_with('-') {
                return None;
            }
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).unwrap_or(&"").to_string(),
                shell: f.get(6).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// Parses /etc/group (`name:password:gid:member,member`).
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('+') || line.starts_with('-') {
                return None;
            }
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 3 || f[0].is_empty() {
                return None;
            }
            let members =
                f.get(3).map(|m| m.split(',').map(str::trim).filter(|m| !m.is_empty()).map(String::from).collect());
            Some(GroupEntry { name: f[0].to_owned(), gid: f[2].parse().ok()?, members: members.unwrap_or_default() })
        })
        .collect()
}

/// The process identity to put in `process.user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Sorted, without duplicates, including `gid` (as containerd does).
    pub additional_gids: Vec<u32>,
}

/// A user or group reference: numeric or by name, plus the field it came from.
#[derive(Debug, Clone)]
enum Ref {
    Id(u32),
    Name(String),
}

/// Resolves the container's identity (containerd's order: run_as_username, run_as_user, image User).
pub(crate) fn container_identity(
    ctx: &Ctx,
    sc: Option<&LinuxContainerSecurityContext>,
    image_user: &str,
    db: &UserDb,
) -> Result<Identity, SpecError> {
    let default_sc = LinuxContainerSecurityContext::default();
    let sc = sc.unwrap_or(&default_sc);
    let sc_field = "linux.security_context";
    let group = match &sc.run_as_group {
        Some(g) => Some(Ref::Id(id_in_range(ctx, &format!("{sc_field}.run_as_group"), g.value)?)),
        None => None,
    };
    let (user, group, user_field) = if !sc.run_as_username.is_empty() {
        (Ref::Name(sc.run_as_username.clone()), group, format!("{sc_field}.run_as_username"))
    } else if let Some(u) = &sc.run_as_user {
        let field = format!("{sc_field}.run_as_user");
        (Ref::Id(id_in_range(ctx, &field, u.value)?), group, field)
    } else if group.is_some() {
        return Err(ctx.invalid(&format!("{sc_field}.run_as_group"), "is set without run_as_user or run_as_username"));
    } else {
        let (u, g) = parse_user_string(ctx, image_user)?;
        (u, g, "image.user".to_owned())
    };

    let (uid, default_gid, username) = match &user {
        Ref::Id(uid) => match db.user_by_uid(*uid) {
            Some(u) => (*uid, u.gid, Some(u.name.clone())),
            None => (*uid, 0, None),
        },
        Ref::Name(name) => match db.user_by_name(name) {
            Some(u) => (u.uid, u.gid, Some(name.clone())),
            None => return Err(ctx.invalid(&user_field, format!("user {name:?} is not in the image's /etc/passwd"))),
        },
    };
    let gid = match group {
        None => default_gid,
        Some(Ref::Id(g)) => g,
        Some(Ref::Name(name)) => match db.group_by_name(&name) {
            Some(g) => g.gid,
            None => return Err(ctx.invalid(&user_field, format!("group {name:?} is not in the image's /etc/group"))),
        },
    };

    let mut gids = BTreeSet::from([gid]);
    let policy = SupplementalGroupsPolicy::try_from(sc.supplemental_groups_policy).map_err(|_| {
        ctx.invalid(
            &format!("{sc_field}.supplemental_groups_policy"),
            format!("unknown policy {}", sc.supplemental_groups_policy),
        )
    })?;
    if policy == SupplementalGroupsPolicy::Merge {
        if let Some(name) = &username {
            let member_of = db.groups.iter().filter(|g| g.name != *name && g.members.iter().any(|m| m == name));
            gids.extend(member_of.map(|g| g.gid));
        }
    }
    for (i, g) in sc.supplemental_groups.iter().enumerate() {
        gids.insert(id_in_range(ctx, &format!("{sc_field}.supplemental_groups[{i}]"), *g)?);
    }
    Ok(Identity { uid, gid, additional_gids: gids.into_iter().collect() })
}

/// The pod infra process's identity: run_as_user / run_as_group of the sandbox, numeric only.
pub(crate) fn sandbox_identity(
    ctx: &Ctx,
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
    supplemental: &[i64],
) -> Result<Identity, SpecError> {
    let sc_field = "linux.security_context";
    if run_as_group.is_some() && run_as_user.is_none() {
        return Err(ctx.invalid(&format!("{sc_field}.run_as_group"), "is set without run_as_user"));
    }
    let uid = run_as_user.map(|u| id_in_range(ctx, &format!("{sc_field}.run_as_user"), u)).transpose()?.unwrap_or(0);
    let gid = run_as_group.map(|g| id_in_range(ctx, &format!("{sc_field}.run_as_group"), g)).transpose()?.unwrap_or(0);
    let mut gids = BTreeSet::from([gid]);
    for (i, g) in supplemental.iter().enumerate() {
        gids.insert(id_in_range(ctx, &format!("{sc_field}.supplemental_groups[{i}]"), *g)?);
    }
    Ok(Identity { uid, gid, additional_gids: gids.into_iter().collect() })
}

/// Ids must fit what runc (and berth-runtime) accept: 0..=i32::MAX.
fn id_in_range(ctx: &Ctx, field: &str, id: i64) -> Result<u32, SpecError> {
    if (0..=i64::from(i32::MAX)).contains(&id) {
        Ok(id as u32)
    } else {
        Err(ctx.invalid(field, format!("{id} is outside 0..={}", i32::MAX)))
    }
}

/// Parses an image `User` string: "", "uid", "name", "uid:gid", "name:group" (and mixes).
fn parse_user_string(ctx: &Ctx, user: &str) -> Result<(Ref, Option<Ref>), SpecError> {
    let field = "image.user";
    let one = |part: &str| -> Result<Ref, SpecError> {
        if part.is_empty() {
            return Err(ctx.invalid(field, format!("{user:?} has an empty user or group")));
        }
        match part.parse::<i64>() {
            Ok(id) => Ok(Ref::Id(id_in_range(ctx, field, id)?)),
            Err(_) if part.bytes().all(|b| b.is_ascii_digit()) => {
                Err(ctx.invalid(field, format!("{user:?} is out of range")))
            }
            Err(_) => Ok(Ref::Name(part.to_owned())),
        }
    };
    let parts: Vec<&str> = user.split(':').collect();
    match parts.as_slice() {
        [""] => Ok((Ref::Id(0), None)),
        [u] => Ok((one(u)?, None)),
        [u, g] => Ok((one(u)?, Some(one(g)?))),
        _ => Err(ctx.invalid(field, format!("{user:?} is not user[:group]"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::runtime::v1::Int64Value;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\n+nis\nbroken:x:notanumber:1\n\
                          default-user:x:1000:1000::/home/default-user:/bin/sh\nwww:x:33:33::/var/www:/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\ndefault-user:x:1000:default-user\n\
                         group-defined-in-image:x:50000:default-user,www\nstaff:x:50:www\n";

    fn db() -> UserDb {
        UserDb::parse(PASSWD, GROUP)
    }

    fn ctx() -> Ctx {
        Ctx::new("containers[web]")
    }

    fn sc(f: impl FnOnce(&mut LinuxContainerSecurityContext)) -> LinuxContainerSecurityContext {
        let mut sc = LinuxContainerSecurityContext::default();
        f(&mut sc);
        sc
    }

    fn ident(uid: u32, gid: u32, gids: &[u32]) -> Identity {
        Identity { uid, gid, additional_gids: gids.to_vec() }
    }

    #[test]
    fn parses_passwd_and_group_skipping_junk() {
        let db = db();
        assert_eq!(db.passwd.len(), 3);
        assert_eq!(
            db.passwd[1],
            PasswdEntry {
                name: "default-user".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/default-user".into(),
                shell: "/bin/sh".into()
            }
        );
        assert_eq!(db.groups[3].members, vec!["default-user", "www"]);
        assert!(db.groups[0].members.is_empty());
    }

    #[test]
    fn no_user_anywhere_is_root() {
        assert_eq!(container_identity(&ctx(), None, "", &db()).unwrap(), ident(0, 0, &[0]));
        assert_eq!(container_identity(&ctx(), None, "", &UserDb::default()).unwrap(), ident(0, 0, &[0]));
    }

    #[test]
    fn run_as_user_takes_gid_and_groups_from_the_image() {
        let s = sc(|s| {
            s.run_as_user = Some(Int64Value { value: 1000 });
            s.supplemental_groups = vec![1234];
        });
        // critest SupplementalGroupsPolicy=Merge: 1000 (self), 1234, 50000 (from /etc/group).
        assert_eq!(
            container_identity(&ctx(), Some(&s), "www", &db()).unwrap(),
            ident(1000, 1000, &[1000, 1234, 50000])
        );
    }

    #[test]
    fn strict_policy_ignores_image_groups() {
        let s = sc(|s| {
            s.run_as_user = Some(Int64Value { value: 1000 });
            s.supplemental_groups = vec![1234];
            s.supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32;
        });
        assert_eq!(container_identity(&ctx(), Some(&s), "", &db()).unwrap(), ident(1000, 1000, &[1000, 1234]));
    }

    #[test]
    fn unknown_uid_gets_gid_zero() {
        let s = sc(|s| s.run_as_user = Some(Int64Value { value: 4242 }));
        assert_eq!(container_identity(&ctx(), Some(&s), "", &db()).unwrap(), ident(4242, 0, &[0]));
    }

    #[test]
    fn run_as_group_overrides_the_users_gid() {
        let s = sc(|s| {
            s.run_as_user = Some(Int64Value { value: 33 });
            s.run_as_group = Some(Int64Value { value: 7 });
        });
        assert_eq!(container_identity(&ctx(), Some(&s), "", &db()).unwrap(), ident(33, 7, &[7, 50, 50000]));
    }

    #[test]
    fn run_as_group_without_user_is_an_error() {
        let s = sc(|s| s.run_as_group = Some(Int64Value { value: 7 }));
        let err = container_identity(&ctx(), Some(&s), "1000", &db()).unwrap_err();
        assert_eq!(err.field(), "containers[web].linux.security_context.run_as_group");
    }

    #[test]
    fn run_as_username_is_resolved_and_must_exist() {
        let s = sc(|s| s.run_as_username = "www".into());
        assert_eq!(container_identity(&ctx(), Some(&s), "", &db()).unwrap(), ident(33, 33, &[33, 50, 50000]));
        let s = sc(|s| s.run_as_username = "nobody".into());
        let err = container_identity(&ctx(), Some(&s), "", &db()).unwrap_err();
        assert_eq!(err.field(), "containers[web].linux.security_context.run_as_username");
        assert!(err.to_string().contains("\"nobody\""), "{err}");
    }

    #[test]
    fn username_wins_over_uid() {
        let s = sc(|s| {
            s.run_as_username = "www".into();
            s.run_as_user = Some(Int64Value { value: 1000 });
        });
        assert_eq!(container_identity(&ctx(), Some(&s), "", &db()).unwrap().uid, 33);
    }

    #[test]
    fn image_user_forms() {
        let id = |u: &str| container_identity(&ctx(), None, u, &db());
        assert_eq!(id("1000").unwrap(), ident(1000, 1000, &[1000, 50000]));
        assert_eq!(id("1000:5").unwrap(), ident(1000, 5, &[5, 50000]));
        assert_eq!(id("default-user").unwrap(), ident(1000, 1000, &[1000, 50000]));
        assert_eq!(id("www:staff").unwrap(), ident(33, 50, &[50, 50000]));
        assert_eq!(id("5:staff").unwrap(), ident(5, 50, &[50]));
        for bad in ["ghost", "www:ghosts", "a:b:c", ":5", "99999999999", "-1"] {
            let err = id(bad).unwrap_err();
            assert_eq!(err.field(), "containers[web].image.user", "{bad}");
        }
    }

    #[test]
    fn out_of_range_ids_name_their_field() {
        let s = sc(|s| s.run_as_user = Some(Int64Value { value: -1 }));
        assert_eq!(
            container_identity(&ctx(), Some(&s), "", &db()).unwrap_err().field(),
            "containers[web].linux.security_context.run_as_user"
        );
        let s = sc(|s| s.supplemental_groups = vec![1, 1 << 40]);
        assert_eq!(
            container_identity(&ctx(), Some(&s), "", &db()).unwrap_err().field(),
            "containers[web].linux.security_context.supplemental_groups[1]"
        );
        let s = sc(|s| s.supplemental_groups_policy = 9);
        assert!(container_identity(&ctx(), Some(&s), "", &db())
            .unwrap_err()
            .field()
            .ends_with("supplemental_groups_policy"));
    }

    #[test]
    fn sandbox_identity_is_numeric() {
        let c = Ctx::new("sandbox[p]");
        assert_eq!(sandbox_identity(&c, None, None, &[]).unwrap(), ident(0, 0, &[0]));
        assert_eq!(sandbox_identity(&c, Some(65535), Some(65535), &[3]).unwrap(), ident(65535, 65535, &[3, 65535]));
        assert_eq!(
            sandbox_identity(&c, None, Some(1), &[]).unwrap_err().field(),
            "sandbox[p].linux.security_context.run_as_group"
        );
    }
}
