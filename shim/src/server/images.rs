//! ImageService RPCs over the image store: ListImages, ImageStatus, PullImage, RemoveImage,
//! ImageFsInfo.

use std::sync::Arc;

use berth_proto::runtime::v1 as cri;

use super::{CriError, CriResult, Shim};
use crate::image::{Auth, Image};

fn to_cri(img: &Image) -> cri::Image {
    let (uid, username) = match img.config.user.split(':').next().unwrap_or_default() {
        "" => (Some(cri::Int64Value { value: 0 }), String::new()),
        u => match u.parse::<i64>() {
            Ok(value) => (Some(cri::Int64Value { value }), String::new()),
            Err(_) => (None, u.to_string()),
        },
    };
    cri::Image {
        id: img.id.clone(),
        repo_tags: img.repo_tags.clone(),
        repo_digests: img.repo_digests.clone(),
        size: img.size,
        uid,
        username,
        spec: Some(cri::ImageSpec { image: img.id.clone(), ..Default::default() }),
        pinned: false,
    }
}

fn image_error(e: crate::image::ImageError) -> CriError {
    CriError::Internal(e.chain())
}

impl Shim {
    pub fn list_images(&self, filter: Option<cri::ImageFilter>) -> Vec<cri::Image> {
        let wanted = filter.and_then(|f| f.image).map(|s| s.image).filter(|s| !s.is_empty());
        match wanted {
            Some(name) => self.images.get(&name).iter().map(to_cri).collect(),
            None => self.images.list().iter().map(to_cri).collect(),
        }
    }

    pub fn image_status(&self, spec: cri::ImageSpec, verbose: bool) -> CriResult<cri::ImageStatusResponse> {
        let Some(img) = self.images.get(&spec.image) else {
            return Ok(cri::ImageStatusResponse { image: None, info: Default::default() });
        };
        let mut info = std::collections::HashMap::new();
        if verbose {
            let c = &img.config;
            let v = serde_json::json!({ "id": img.id, "user": c.user, "env": c.env, "entrypoint": c.entrypoint, "cmd": c.cmd, "workingDir": c.working_dir });
            info.insert("info".into(), v.to_string());
        }
        Ok(cri::ImageStatusResponse { image: Some(to_cri(&img)), info })
    }

    pub async fn pull_image(self: &Arc<Self>, req: cri::PullImageRequest) -> CriResult<cri::PullImageResponse> {
        let spec = req.image.unwrap_or_default();
        if spec.image.is_empty() {
            return Err(CriError::InvalidArgument("image.image: must not be empty".into()));
        }
        let auth = req.auth.map(|a| Auth {
            username: a.username,
            password: a.password,
            auth: a.auth,
            server_address: a.server_address,
            identity_token: a.identity_token,
            registry_token: a.registry_token,
        });
        let img = self.images.pull(&spec.image, auth.as_ref()).await.map_err(image_error)?;
        Ok(cri::PullImageResponse { image_ref: img.id })
    }

    pub async fn remove_image(self: &Arc<Self>, spec: cri::ImageSpec) -> CriResult<()> {
        let images = self.images.clone();
        tokio::task::spawn_blocking(move || images.remove(&spec.image))
            .await
            .map_err(|e| CriError::Internal(e.to_string()))?
            .map_err(image_error)
    }

    pub fn image_fs_info(&self) -> CriResult<cri::ImageFsInfoResponse> {
        let u = self.images.fs_info().map_err(image_error)?;
        let now = crate::monitor::proto::now_nanos();
        let usage = cri::FilesystemUsage {
            timestamp: now,
            fs_id: Some(cri::FilesystemIdentifier { mountpoint: self.cfg.image_dir.display().to_string() }),
            used_bytes: Some(cri::UInt64Value { value: u.used_bytes }),
            inodes_used: Some(cri::UInt64Value { value: u.inodes_used }),
        };
        Ok(cri::ImageFsInfoResponse { image_filesystems: vec![usage.clone()], container_filesystems: vec![usage] })
    }
}
