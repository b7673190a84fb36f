//! A real vLLM serving https with its own `--ssl-*` flags and requiring a
//! client certificate (mutual TLS), behind a gateway that serves https
//! itself: through both TLS legs, the client gets what the engine sends it
//! directly; without the client certificate, the engine refuses the
//! gateway and the client is told why.

use super::*;
use common::pki::Pki;

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn a_vllm_that_requires_mutual_tls_is_served_through_the_gateway_unchanged() {
    let pki = Pki::new("vllm");
    let server = pki.leaf("vllm", &["localhost", "127.0.0.1"], -1, 30);
    let ours = pki.leaf("thinkgate", &["thinkgate"], -1, 30);
    let listener = pki.leaf("gateway", &["localhost", "127.0.0.1"], -1, 30);
    let path = |p: &std::path::Path| p.display().to_string();
    let (key, cert, ca) = (path(&server.key), path(&server.cert), path(&pki.ca_file()));
    let (our_cert, our_key) = (path(&ours.cert), path(&ours.key));
    let e = Engine::start(
        Kind::VllmParser,
        &[
            "--ssl-keyfile",
            &key,
            "--ssl-certfile",
            &cert,
            "--ssl-ca-certs",
            &ca,
            "--ssl-cert-reqs",
            "2",
            "--client-cert",
            &our_cert,
            "--client-key",
            &our_key,
        ],
    );
    assert!(e.url.starts_with("https://127.0.0.1:"), "{}", e.url);
    rt().block_on(async {
        let direct = pki.https_client(false, Some(&ours));
        let (gw, rec) = gateway_for(&[&e], |cfg| {
            cfg.upstream_tls.ca_file = Some(pki.ca_file());
            cfg.upstream_tls.cert_file = Some(ours.cert.clone());
            cfg.upstream_tls.key_file = Some(ours.key.clone());
            cfg.tls.cert_file = Some(listener.cert.clone());
            cfg.tls.key_file = Some(listener.key.clone());
        })
        .await;
        let via = format!("https://localhost:{}", gw.proxy_addr.port());
        let through = pki.https_client(false, None);
        let modes = [(true, false), (true, true), (false, false)];
        for (stream, usage) in modes {
            let body = chat(stream, usage);
            let a = call(&direct, &e.url, "/v1/chat/completions", &body, &[]).await;
            let b = call(&through, &via, "/v1/chat/completions", &body, &[]).await;
            let what = format!("stream {stream} usage {usage}");
            assert_eq!(
                a.status,
                200,
                "{what}: {}",
                String::from_utf8_lossy(&a.body)
            );
            assert_eq!(
                b.status,
                200,
                "{what}: {}",
                String::from_utf8_lossy(&b.body)
            );
            if stream {
                assert_eq!(
                    wire::canonical_stream(&a.body),
                    wire::canonical_stream(&b.body),
                    "{what}"
                );
            } else {
                assert_eq!(
                    wire::canonical_json(&a.body),
                    wire::canonical_json(&b.body),
                    "{what}"
                );
            }
            assert_eq!(
                comparable_headers(&a.headers),
                comparable_headers(&b.headers),
                "{what}"
            );
        }
        let recs = stop(gw, &rec).await;
        assert_eq!(recs.len(), modes.len());
        let think = chain().think_words.len() as u64;
        for r in &recs {
            assert_eq!(r["outcome"], "completed", "{r}");
            assert_eq!(r["thinking_tokens"], think, "{r}");
        }
        // without its client certificate the gateway is refused: a 502
        // that names the cause, at once
        let (gw, _) =
            gateway_for(&[&e], |cfg| cfg.upstream_tls.ca_file = Some(pki.ca_file())).await;
        let via = format!("http://{}", gw.proxy_addr);
        let s = call(
            &client(),
            &via,
            "/v1/chat/completions",
            &chat(true, false),
            &[],
        )
        .await;
        assert_eq!(s.status, 502);
        let v: Value = serde_json::from_slice(&s.body).unwrap();
        assert_eq!(v["error"]["type"], "upstream_tls_error", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("(refused)"),
            "{v}"
        );
        gw.shutdown();
        gw.wait().await;
    });
}
