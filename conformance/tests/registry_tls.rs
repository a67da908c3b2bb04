//! Private registries as nodes have them (issue 16): a loopback registry
//! over HTTPS with a test CA, one of them demanding client certificates
//! (mutual TLS). berthd pulls from them with the CA and the client pair
//! from a `certs.d/<host>/` directory (Docker's, containerd's and CRI-O's
//! layout) or from `[registry.tls."host"]` in berth.toml; a wrong CA is
//! refused and leaves nothing; `skip_verify` is an explicit way past it.

mod common;

use std::path::{Path, PathBuf};

use berth_conformance::Env;
use berth_conformance::berthd::{Berthd, BerthdOptions};
use berth_conformance::images::{Format, ImageBuilder};
use berth_conformance::registry::{Registry, TlsFiles};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("berth test CA {name}"));
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A leaf for 127.0.0.1 (server) or a client, as (cert PEM, key PEM).
    fn issue(&self, server: bool) -> (String, String) {
        let names = if server {
            vec!["127.0.0.1".to_string(), "localhost".to_string()]
        } else {
            Vec::new()
        };
        let mut p = CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            if server { "127.0.0.1" } else { "berth node" },
        );
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

async fn pull(cri: &berth_conformance::cri::Cri, image: &str) -> Result<String, tonic::Status> {
    cri.pull(image).await
}

#[tokio::test]
async fn pulls_over_tls_with_a_ca_a_client_certificate_and_certs_d() {
    let files = tempfile::tempdir().unwrap();
    let ca = Ca::new("registry");
    let (server_cert, server_key) = ca.issue(true);
    let (client_cert, client_key) = ca.issue(false);
    let ca_pem = write(files.path(), "ca.pem", &ca.cert.pem());
    let tls = TlsFiles {
        cert: write(files.path(), "server.pem", &server_cert),
        key: write(files.path(), "server-key.pem", &server_key),
        client_ca: None,
    };
    let plain = Registry::start().await.expect("the plain registry");
    let mtls = Registry::start_tls_over(
        &plain,
        &TlsFiles {
            client_ca: Some(ca_pem.clone()),
            ..tls.clone()
        },
    )
    .await
    .expect("the mutual-TLS registry");
    let server_only = Registry::start_tls_over(&plain, &tls)
        .await
        .expect("the TLS registry");

    // certs.d: the CA and the client pair, by host, as an operator has them.
    let certs_d = tempfile::tempdir().unwrap();
    for r in [&mtls, &server_only] {
        let d = certs_d.path().join(r.host());
        std::fs::create_dir_all(&d).unwrap();
        write(&d, "ca.crt", &ca.cert.pem());
    }
    let d = certs_d.path().join(mtls.host());
    write(&d, "client.cert", &client_cert);
    write(&d, "client.key", &client_key);

    let options = BerthdOptions::default().extra_registry(&format!(
        "certs_dirs = [{:?}]",
        certs_d.path().display().to_string()
    ));
    let env = Env::start_with(plain, options).await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    env.push("tls/busybox:1", &img).await;
    for r in [&mtls, &server_only] {
        let image = format!("{}/tls/busybox:1", r.host());
        let id = pull(&env.cri, &image)
            .await
            .unwrap_or_else(|e| panic!("pull of {image} over TLS: {e}"));
        assert!(id.starts_with("sha256:"), "{id}");
    }

    // berth.toml's own settings: a CA that did not sign the registry's
    // certificate is refused; skip_verify is the explicit way past it;
    // the client pair from the file works as from certs.d.
    let other = Ca::new("other");
    let other_pem = write(files.path(), "other-ca.pem", &other.cert.pem());
    let client_pem = write(files.path(), "client.pem", &client_cert);
    let client_key_pem = write(files.path(), "client-key.pem", &client_key);
    let toml = format!(
        "certs_dirs = []\n\
         [registry.tls.\"{mtls}\"]\nca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {key:?}\n\
         [registry.tls.\"{server}\"]\nca_file = {other:?}\n",
        mtls = mtls.host(),
        server = server_only.host(),
        ca = ca_pem.display().to_string(),
        cert = client_pem.display().to_string(),
        key = client_key_pem.display().to_string(),
        other = other_pem.display().to_string(),
    );
    let mut second = Berthd::start(BerthdOptions::default().extra_registry(&toml))
        .await
        .expect("a second berthd");
    let cri = second.cri().await.unwrap();
    pull(&cri, &format!("{}/tls/busybox:1", mtls.host()))
        .await
        .expect("mutual TLS with the pair from berth.toml");
    let e = pull(&cri, &format!("{}/tls/busybox:1", server_only.host()))
        .await
        .expect_err("a registry certificate the configured CA did not sign");
    assert!(
        e.message().to_lowercase().contains("certificate") || e.message().contains("UnknownIssuer"),
        "the error names the certificate: {}",
        e.message()
    );
    assert!(
        cri.list_images(None).await.unwrap().len() == 1,
        "the refused pull added nothing"
    );
    second.stop().await.expect("the second berthd stops");

    // A client without its certificate is refused by the mutual-TLS one.
    let toml = format!(
        "certs_dirs = []\n[registry.tls.\"{mtls}\"]\nca_file = {ca:?}\n\
         [registry.tls.\"{server}\"]\nskip_verify = true\n",
        mtls = mtls.host(),
        server = server_only.host(),
        ca = ca_pem.display().to_string(),
    );
    let mut third = Berthd::start(BerthdOptions::default().extra_registry(&toml))
        .await
        .expect("a third berthd");
    let cri = third.cri().await.unwrap();
    pull(&cri, &format!("{}/tls/busybox:1", mtls.host()))
        .await
        .expect_err("mutual TLS without a client certificate");
    pull(&cri, &format!("{}/tls/busybox:1", server_only.host()))
        .await
        .expect("skip_verify takes any certificate");
    third.stop().await.expect("the third berthd stops");
    drop((mtls, server_only));
    env.finish().await;
}
