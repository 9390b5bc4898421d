//! Storage: the status blob's upload (§12.3), through the HostGAPlugin
//! first, else straight to storage as a block blob or in 512-byte pages; and
//! artifact downloads (§13.4), straight from storage first, else through the
//! HostGAPlugin. Storage is reached via `HttpProxy.*`.

use std::path::Path;

use super::retry::Call;
use super::{RetryPolicy, WireClient, WireError};
use crate::wire::docs::{StatusBlobType, StatusUploadBlob};

/// Storage's API version, for requests the HostGAPlugin replays.
pub const STORAGE_API_VERSION: &str = "2014-02-14";

impl WireClient {
    /// Uploads the status blob (§12): through the HostGAPlugin first, as the
    /// current agent does (it works where NSGs block storage), then directly
    /// to storage. A page blob goes directly.
    pub fn upload_status(
        &mut self,
        blob: &StatusUploadBlob,
        content: &[u8],
    ) -> Result<(), WireError> {
        if blob.blob_type == StatusBlobType::BlockBlob {
            match self.put_status(&blob.url, content) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    log::info!("status through the HostGAPlugin failed ({e}); uploading directly")
                }
            }
        }
        self.put_blob_directly(blob, content)
    }

    /// Downloads an artifact (an extension package) into a new file `dest`,
    /// at most `max_bytes`, as §13.4 says: straight from storage (through
    /// `HttpProxy.*`), else through the HostGAPlugin's `/extensionArtifact`
    /// with `uri` and, when given, the manifest it came from. Returns the
    /// bytes written. On failure no file is left at `dest`.
    ///
    /// Storage gets one attempt: the plugin, tried next, is the retry (and
    /// the way round a network that blocks storage). An artifact that is too
    /// large, or a `dest` that cannot be created, is not tried again.
    pub fn download_artifact(
        &mut self,
        uri: &str,
        manifest_uri: Option<&str>,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<u64, WireError> {
        match self.download_directly(uri, dest, max_bytes) {
            Ok(n) => return Ok(n),
            Err(e @ (WireError::TooLarge { .. } | WireError::Io { .. })) => return Err(e),
            Err(e) => log::info!("direct download failed ({e}); trying the HostGAPlugin"),
        }
        self.extension_artifact_to_file(uri, manifest_uri, dest, max_bytes)
    }

    fn download_directly(&self, uri: &str, dest: &Path, max_bytes: u64) -> Result<u64, WireError> {
        let once = RetryPolicy {
            attempts: 1,
            throttled_attempts: 1,
            ..self.options.retry.clone()
        };
        self.execute_download(
            &Call {
                headers: self.storage_headers(),
                proxy: self.options.storage_proxy.as_deref(),
                ..Call::new("GET", uri, &once)
            },
            dest,
            max_bytes,
        )
    }

    /// Storage requests carry its API version and a date (in waagent's
    /// format, which SAS authentication accepts).
    fn storage_headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("x-ms-version", STORAGE_API_VERSION.to_string()),
            (
                "x-ms-date",
                crate::utc::timestamp(std::time::SystemTime::now()),
            ),
        ]
    }

    fn put_blob_directly(&self, blob: &StatusUploadBlob, content: &[u8]) -> Result<(), WireError> {
        let put = |url: &str, extra: Vec<(&'static str, String)>, body: &[u8]| {
            let mut headers = self.storage_headers();
            headers.extend(extra);
            self.execute(&Call {
                headers,
                body: Some(body),
                ok: &[201],
                proxy: self.options.storage_proxy.as_deref(),
                ..Call::new("PUT", url, &self.options.retry)
            })
            .map(drop)
        };
        match blob.blob_type {
            StatusBlobType::BlockBlob => put(
                &blob.url,
                vec![("x-ms-blob-type", "BlockBlob".into())],
                content,
            ),
            StatusBlobType::PageBlob => {
                // Pages are 512 bytes: create the blob at the padded size,
                // then write the content zero-padded, at most 4 MiB a time.
                let padded = content.len().div_ceil(512) * 512;
                put(
                    &blob.url,
                    vec![
                        ("x-ms-blob-type", "PageBlob".into()),
                        ("x-ms-blob-content-length", padded.to_string()),
                    ],
                    &[],
                )?;
                let sep = if blob.url.contains('?') { '&' } else { '?' };
                let page_url = format!("{}{sep}comp=page", blob.url);
                for (i, chunk) in content.chunks(4 << 20).enumerate() {
                    let start = i * (4 << 20);
                    let mut body = chunk.to_vec();
                    body.resize(chunk.len().div_ceil(512) * 512, 0);
                    let range = format!("bytes={start}-{}", start + body.len() - 1);
                    put(
                        &page_url,
                        vec![("x-ms-range", range), ("x-ms-page-write", "update".into())],
                        &body,
                    )?;
                }
                Ok(())
            }
        }
    }
}
