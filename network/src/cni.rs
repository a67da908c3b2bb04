//! CNI plugins (placeholder until the CNI runner lands).

use std::path::Path;

use crate::{Attachment, Error, NetworkConfig, Plugin, PodRequest, Readiness, Result};

pub struct CniPlugin;

impl CniPlugin {
    pub fn open(_cfg: &NetworkConfig, _root: &Path) -> Result<Self> {
        Ok(CniPlugin)
    }
}

impl Plugin for CniPlugin {
    fn name(&self) -> &'static str {
        "cni"
    }
    fn readiness(&self) -> Readiness {
        Readiness::NotReady {
            reason: "NetworkPluginNotReady".into(),
            message: "the CNI plugin runner is not built yet".into(),
        }
    }
    fn setup(&self, _pod: &PodRequest) -> Result<Attachment> {
        Err(Error::NotReady(
            "the CNI plugin runner is not built yet".into(),
        ))
    }
    fn teardown(&self, _pod: &PodRequest, _att: &Attachment) -> Result<()> {
        Ok(())
    }
    fn recover(&self, _live: &[(String, Attachment)]) -> Result<()> {
        Ok(())
    }
    fn info(&self) -> serde_json::Value {
        serde_json::json!({ "plugin": "cni" })
    }
}
