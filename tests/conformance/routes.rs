//! The engines' control endpoints, real ones: vLLM's dev-mode routes (the
//! suite's vLLM runs with `VLLM_SERVER_DEV_MODE=1`, as operators do) and
//! llama.cpp's slot actions answer directly, and are closed through the
//! gateway unless the operator opens them.

use super::*;

async fn status(c: &HttpClient, method: &str, url: String) -> u16 {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    common::send(c, req).await.status.as_u16()
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn engine_control_endpoints_are_closed_through_the_gateway() {
    rt().block_on(async {
        let c = client();
        let cases: [(Kind, &[(&str, &str)]); 2] = [
            (
                Kind::VllmParser,
                &[
                    ("POST", "/reset_prefix_cache"),
                    ("GET", "/is_sleeping"),
                    ("GET", "/metrics"),
                ],
            ),
            (
                Kind::LlamaParser,
                &[
                    ("GET", "/slots"),
                    ("POST", "/slots/0?action=erase"),
                    ("GET", "/metrics"),
                ],
            ),
        ];
        for (kind, routes) in cases {
            let e = shared(kind);
            let (gw, rec) = gateway_for(&[e], |_| {}).await;
            let via = format!("http://{}", gw.proxy_addr);
            // the engine serves each route (llama.cpp answers a slot action
            // 501 without `--slot-save-path`: the route is there all the same)
            let mut direct = Vec::new();
            for (m, p) in routes {
                let d = status(&c, m, format!("{}{p}", e.url)).await;
                assert_ne!(d, 404, "{kind:?} {m} {p} direct");
                direct.push(d);
                assert_eq!(
                    status(&c, m, format!("{via}{p}")).await,
                    404,
                    "{kind:?} {m} {p} through the gateway"
                );
            }
            stop(gw, &rec).await;
            let (gw, rec) = gateway_for(&[e], |cfg| {
                cfg.routes.allow_extra = routes
                    .iter()
                    .map(|(m, p)| {
                        let path = p.split('?').next().unwrap();
                        thinkgate::access::routes::Rule::parse(&format!("{m} {path}")).unwrap()
                    })
                    .collect();
            })
            .await;
            let via = format!("http://{}", gw.proxy_addr);
            for ((m, p), d) in routes.iter().zip(&direct) {
                assert_eq!(
                    status(&c, m, format!("{via}{p}")).await,
                    *d,
                    "{kind:?} {m} {p} allowed"
                );
            }
            stop(gw, &rec).await;
        }
    });
}
