//! The built-in bridge plugin (in progress).

use crate::{Attachment, Error, NetworkConfig, Plugin, PodRequest, Readiness, Result};

pub struct BridgePlugin;

impl BridgePlugin {
    pub fn open(_cfg: &NetworkConfig) -> Result<Self> {
        Ok(BridgePlugin)
    }
}

impl Plugin for BridgePlugin {
    fn name(&self) -> &'static str {
        "bridge"
    }
    fn readiness(&self) -> Readiness {
        Readiness::NotReady {
            reason: "NetworkPluginNotReady".into(),
            message: "not built yet".into(),
        }
    }
    fn setup(&self, _pod: &PodRequest) -> Result<Attachment> {
        Err(Error::NotReady("not built yet".into()))
    }
    fn teardown(&self, _pod: &PodRequest, _att: &Attachment) -> Result<()> {
        Ok(())
    }
    fn recover(&self, _live: &[(String, Attachment)]) -> Result<()> {
        Ok(())
    }
    fn info(&self) -> serde_json::Value {
        serde_json::json!({ "plugin": "bridge" })
    }
}
