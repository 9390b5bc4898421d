//! The HostGAPlugin's calls (§11): health, versions, extension artifacts and
//! the status blob through the host, refreshing a stale container id once.

use std::path::Path;

use super::retry::Call;
use super::storage::STORAGE_API_VERSION;
use super::{RetryPolicy, WireClient, WireError};
use crate::http::Response;
use crate::wire::reports;

/// The HostGAPlugin API version.
pub const HOSTPLUGIN_API_VERSION: &str = "2015-09-01";

impl WireClient {
    fn plugin_headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![("x-ms-version", HOSTPLUGIN_API_VERSION.to_string())];
        if let Some(c) = &self.container_id {
            h.push(("x-ms-containerid", c.clone()));
        }
        if let Some(n) = &self.role_config_name {
            h.push(("x-ms-host-config-name", n.clone()));
        }
        h
    }

    /// `GET /health` of the HostGAPlugin: 200 means healthy. Not retried —
    /// the caller polls it.
    pub fn hostplugin_health(&self) -> Result<bool, WireError> {
        let url = format!("{}/health", self.endpoint.hostplugin_base());
        let once = RetryPolicy {
            attempts: 1,
            ..self.options.retry.clone()
        };
        match self.execute(&Call::new("GET", &url, &once)) {
            Ok(_) => Ok(true),
            Err(WireError::Status { .. }) | Err(WireError::Exhausted { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET /versions`: true when the plugin speaks 2015-09-01.
    pub fn hostplugin_supported(&self) -> Result<bool, WireError> {
        let url = format!("{}/versions", self.endpoint.hostplugin_base());
        let r = self.execute(&Call {
            headers: self.plugin_headers(),
            ..Call::new("GET", &url, &self.options.retry)
        })?;
        Ok(String::from_utf8_lossy(&r.body).contains(HOSTPLUGIN_API_VERSION))
    }

    /// A plugin call that refreshes the container id and config name from a
    /// new goal state and tries once more when the plugin says they are
    /// stale (410, or 400 naming InvalidContainerConfiguration).
    fn plugin_call(
        &mut self,
        method: &str,
        url: &str,
        extra: &[(&'static str, String)],
        body: Option<&[u8]>,
        also_retry: &[u16],
    ) -> Result<Response, WireError> {
        self.plugin_call_with(method, url, extra, body, also_retry, |c, call| {
            c.execute(call)
        })
    }

    /// [`plugin_call`](Self::plugin_call) with the request run by `exec`
    /// (`execute`, or `execute_download` for an artifact that goes to a file).
    fn plugin_call_with<T>(
        &mut self,
        method: &str,
        url: &str,
        extra: &[(&'static str, String)],
        body: Option<&[u8]>,
        also_retry: &[u16],
        mut exec: impl FnMut(&Self, &Call<'_>) -> Result<T, WireError>,
    ) -> Result<T, WireError> {
        for round in 0..2 {
            let mut headers = self.plugin_headers();
            headers.extend(extra.iter().cloned());
            let call = Call {
                headers,
                body,
                ok: &[200, 201],
                also_retry,
                ..Call::new(method, url, &self.options.retry)
            };
            let result = exec(self, &call);
            let stale = match &result {
                Err(WireError::Gone { .. }) => true,
                Err(WireError::Status {
                    status: 400, body, ..
                }) => body.contains("InvalidContainerConfiguration"),
                Err(WireError::Exhausted { last, .. }) => {
                    matches!(&**last, WireError::Status { status: 400, body, .. } if body.contains("InvalidContainerConfiguration"))
                }
                _ => false,
            };
            if stale && round == 0 {
                log::info!(
                    "HostGAPlugin: container configuration is stale; refreshing the goal state"
                );
                self.goal_state()?;
                continue;
            }
            return result;
        }
        Err(WireError::Missing("HostGAPlugin: no answer".into()))
    }

    /// The `/extensionArtifact` URL and its headers (§11.3).
    fn artifact_request(
        &self,
        artifact_url: &str,
        manifest_url: Option<&str>,
    ) -> (String, Vec<(&'static str, String)>) {
        let url = format!("{}/extensionArtifact", self.endpoint.hostplugin_base());
        let mut extra = vec![("x-ms-artifact-location", artifact_url.to_string())];
        if let Some(m) = manifest_url {
            extra.push(("x-ms-artifact-manifest-location", m.to_string()));
        }
        (url, extra)
    }

    /// `GET /extensionArtifact`: a storage document (a manifest) through the
    /// host, in memory and bounded like every document.
    pub fn extension_artifact(
        &mut self,
        artifact_url: &str,
        manifest_url: Option<&str>,
    ) -> Result<Vec<u8>, WireError> {
        let (url, extra) = self.artifact_request(artifact_url, manifest_url);
        // The plugin answers 400 while its cache warms up (§4.3).
        Ok(self.plugin_call("GET", &url, &extra, None, &[400])?.body)
    }

    /// `GET /extensionArtifact` into a new file `dest` (a package: streamed,
    /// at most `max_bytes`, no file left on failure; see
    /// [`http::download`](crate::http::download)). Returns the bytes written.
    pub fn extension_artifact_to_file(
        &mut self,
        artifact_url: &str,
        manifest_url: Option<&str>,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<u64, WireError> {
        let (url, extra) = self.artifact_request(artifact_url, manifest_url);
        self.plugin_call_with("GET", &url, &extra, None, &[400], |c, call| {
            c.execute_download(call, dest, max_bytes)
        })
    }

    /// `PUT /status`: upload the status blob (a block blob) through the host.
    pub fn put_status(&mut self, blob_url: &str, content: &[u8]) -> Result<(), WireError> {
        let url = format!("{}/status", self.endpoint.hostplugin_base());
        let envelope = reports::status_envelope(
            blob_url,
            &[
                ("x-ms-version", STORAGE_API_VERSION),
                ("x-ms-blob-type", "BlockBlob"),
            ],
            Some(content),
        );
        let extra = [("Content-Type", "application/json".to_string())];
        self.plugin_call("PUT", &url, &extra, Some(envelope.as_bytes()), &[])
            .map(drop)
    }
}
