//! NBD over TLS (STARTTLS) at both sites of a pair, with the clients hosts
//! use: qemu-io and qemu-img (`--object tls-creds-x509`), nbdinfo and
//! nbdcopy (`nbds://` URIs with `tls-certificates=`). With TLS required a
//! plain client is refused and sees no export names; a host without a
//! certificate from the CA is refused.

mod common;

use common::two_site::*;
use common::*;

/// qemu's options for a TLS connection to `node`'s vol0 with the host
/// credentials in `creds` (a tls-creds-x509 directory).
fn qemu_tls(node: &NodeProcess, creds: &std::path::Path) -> [String; 4] {
    let (host, port) = (node.nbd.ip(), node.nbd.port());
    [
        "--object".into(),
        format!("tls-creds-x509,id=tls0,dir={},endpoint=client", creds.display()),
        "--image-opts".into(),
        format!("driver=nbd,host={host},port={port},export=vol0,tls-creds=tls0"),
    ]
}

fn run(program: &str, args: &[String]) -> (bool, String) {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_with_deadline(60, program, &refs);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn hosts_reach_both_sites_over_tls_and_plain_or_unknown_hosts_are_refused() {
    require_tool("qemu-io");
    require_tool("qemu-img");
    require_tool("nbdinfo");
    require_tool("nbdcopy");
    let s = TwoSites::start(TwoSiteOptions { nbd_tls: Some("required"), rtt: Some("4ms"), ..Default::default() });
    let creds = s.dir.path().join("certs/host1");
    let nbds = |node: &NodeProcess| format!("nbds://{}/vol0?tls-certificates={}", node.nbd, creds.display());

    // Plain: refused, and no export name shown.
    let (ok, text) = run("qemu-io", &["-f".into(), "raw".into(), "-c".into(), "read 0 4k".into(), s.a.uri("vol0")]);
    assert!(!ok && text.contains("requires TLS"), "{text}");
    let (ok, text) = run("nbdinfo", &["--list".into(), format!("nbd://{}", s.b.nbd)]);
    assert!(!ok && !text.contains("vol0"), "no export names without TLS: {text}");

    // qemu-io writes at A over TLS; B reads it over TLS (pulled from A).
    let mut args: Vec<String> = qemu_tls(&s.a, &creds).to_vec();
    args.extend(["-c".into(), "write -P 0x7e 1M 256k".into()]);
    let (ok, text) = run("qemu-io", &args);
    assert!(ok, "{text}");
    let mut args: Vec<String> = qemu_tls(&s.b, &creds).to_vec();
    args.extend(["-c".into(), "read -P 0x7e 1M 256k".into(), "-c".into(), "read -P 0 0 4k".into()]);
    let (ok, text) = run("qemu-io", &args);
    assert!(ok && !text.contains("Pattern verification failed"), "{text}");

    // nbdinfo and nbdcopy over TLS at both sites; qemu-img convert from B.
    for node in [&s.a, &s.b] {
        let (ok, text) = run("nbdinfo", &["--size".into(), nbds(node)]);
        assert!(ok && text.trim() == (64u64 << 20).to_string(), "{text}");
    }
    let copy = s.dir.path().join("copy.raw");
    let (ok, text) = run("nbdcopy", &[nbds(&s.a), copy.display().to_string()]);
    assert!(ok, "{text}");
    let converted = s.dir.path().join("converted.raw");
    let mut args = vec!["convert".to_string()];
    args.extend(qemu_tls(&s.b, &creds));
    args.extend(["-O".into(), "raw".into(), converted.display().to_string()]);
    let (ok, text) = run("qemu-img", &args);
    assert!(ok, "{text}");
    let (ok, text) = run(
        "qemu-img",
        &[
            "compare".into(),
            "-f".into(),
            "raw".into(),
            "-F".into(),
            "raw".into(),
            copy.display().to_string(),
            converted.display().to_string(),
        ],
    );
    assert!(ok, "A's and B's bytes over TLS are equal: {text}");

    // A host whose credentials hold only the CA (no client certificate).
    let anonymous = s.dir.path().join("anonymous");
    std::fs::create_dir_all(&anonymous).unwrap();
    std::fs::copy(creds.join("ca-cert.pem"), anonymous.join("ca-cert.pem")).unwrap();
    let mut args: Vec<String> = qemu_tls(&s.a, &anonymous).to_vec();
    args.extend(["-c".into(), "read 0 4k".into()]);
    let (ok, text) = run("qemu-io", &args);
    assert!(!ok, "a host without a certificate is refused: {text}");
    assert!(s.a.logs().iter().any(|l| l.contains("TLS handshake failed")), "the refusal is logged");
}

#[test]
fn with_optional_tls_plain_and_tls_hosts_are_both_served() {
    require_tool("qemu-io");
    require_tool("nbdinfo");
    let s = TwoSites::start(TwoSiteOptions { nbd_tls: Some("optional"), ..Default::default() });
    let creds = s.dir.path().join("certs/host1");
    qemu_io(&s.a.uri("vol0"), &["write -P 0x21 0 64k".into()]);
    let mut args: Vec<String> = qemu_tls(&s.a, &creds).to_vec();
    args.extend(["-c".into(), "read -P 0x21 0 64k".into()]);
    let (ok, text) = run("qemu-io", &args);
    assert!(ok && !text.contains("Pattern verification failed"), "{text}");
    let (ok, text) = run("nbdinfo", &["--list".into(), format!("nbd://{}", s.b.nbd)]);
    assert!(ok && text.contains("vol0"), "plain listing allowed: {text}");
}
