//! `CertificateFile`: fetched from the goal state's
//! `RoleInstance/Configuration/Certificates` URL with the transport
//! certificate in the request headers (§5.5, §6.5). `Data` is a base64 CMS
//! EnvelopedData blob encrypted to that certificate; decrypting it is
//! `wire::crypto`'s business (§7.2), this module only reads the envelope.

use super::{parse_root, DocError};

const DOCUMENT: &str = "Certificates";

/// The only package format the agent unpacks.
const PFX_PACKAGE: &str = "Pkcs7BlobWithPfxContents";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificatesDoc {
    /// `Format` (`Pkcs7BlobWithPfxContents`); `None` when absent or empty.
    pub format: Option<String>,
    /// `Data` with all whitespace removed (the fabric wraps it at 64
    /// columns); `None` when absent or empty, which means "no certificates".
    pub data: Option<String>,
}

impl CertificatesDoc {
    pub fn parse(xml: &str) -> Result<Self, DocError> {
        let root = parse_root(DOCUMENT, xml, "CertificateFile")?;
        let file = root.node(DOCUMENT);
        Ok(CertificatesDoc {
            format: file.opt_text("Format"),
            data: file
                .opt_text("Data")
                .map(|d| d.chars().filter(|c| !c.is_whitespace()).collect()),
        })
    }

    /// Whether `data` is the PFX package the agent decrypts. The current
    /// agent skips any other non-empty format (`CertificatesNonPfxPackage`);
    /// an empty or missing format is the old default, the PFX package.
    pub fn is_pfx_package(&self) -> bool {
        matches!(self.format.as_deref(), None | Some(PFX_PACKAGE))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{fixture, sample};
    use super::*;
    use base64::Engine;

    #[test]
    fn fixture_certificates() {
        let doc = CertificatesDoc::parse(&fixture("certificates.xml")).unwrap();
        assert_eq!(doc.format.as_deref(), Some("Pkcs7BlobWithPfxContents"));
        assert!(doc.is_pfx_package());
        let data = doc.data.unwrap();
        assert!(!data.contains(char::is_whitespace));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&data)
            .unwrap();
        assert!(decoded.starts_with(b"Placeholder for tests"));
    }

    #[test]
    fn no_data_means_no_certificates() {
        let doc = CertificatesDoc::parse("<CertificateFile><Format/></CertificateFile>").unwrap();
        assert_eq!(doc, CertificatesDoc::default());
        assert!(doc.is_pfx_package());
    }

    #[test]
    fn sample_certificates_formats() {
        let Some(certs) = sample("wire/certs.xml") else {
            return;
        };
        let doc = CertificatesDoc::parse(&certs).unwrap();
        assert!(doc.is_pfx_package());
        let data = doc.data.unwrap();
        assert!(data.starts_with(
            "MIIOgwYJKoZIhvcNAQcDoIIOdDCCDnACAQIxggEwMIIBLAIBAoAU08PI+CBUqOd4Nbte7MLw"
        ));
        assert!(data.ends_with("945Z9MJiapzD3P33TvKhyQ0wHe5W0z4="));
        assert!(base64::engine::general_purpose::STANDARD
            .decode(&data)
            .is_ok());

        let no_format = sample("wire/certs_no_format_specified.xml").unwrap();
        let doc = CertificatesDoc::parse(&no_format).unwrap();
        assert_eq!(doc.format, None);
        assert!(doc.is_pfx_package());
        assert_eq!(doc.data.as_deref(), Some(data.as_str()));

        let not_pfx = sample("wire/certs_format_not_pfx.xml").unwrap();
        let doc = CertificatesDoc::parse(&not_pfx).unwrap();
        assert_eq!(doc.format.as_deref(), Some("CertificatesNonPfxPackage"));
        assert_eq!(doc.data.as_deref(), Some("NotPFXData"));
        assert!(!doc.is_pfx_package());
    }
}
