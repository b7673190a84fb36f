"""Check the Helm chart offline, with real Helm (helm-python-sdk carries
Helm's Go SDK) and the Kubernetes schemas (kubernetes-validate).

For the default values and every values-*.yaml here:
  - `helm lint --strict` (schema included) must report no warning or error;
  - `helm template` must render, and every manifest must validate against
    the Kubernetes schemas (strict: unknown fields fail); Prometheus
    Operator kinds have no schema there and are checked by promtool
    (rules) and by shape (monitors);
  - the gateway's TOML the chart renders must load in the real binary
    (`thinkgate serve --config FILE --print-config`).
Then the PrometheusRule's groups go to `promtool check rules`, and the
chart's dashboard must equal dashboards/thinkgate.json.

Usage: python3 helm/ci/check.py THINKGATE_BINARY OUT_DIR
"""
import glob
import json
import os
import subprocess
import sys

import helm_python as helm
import kubernetes_validate
import yaml

KUBE = "1.30.0"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "helm", "thinkgate")
OPERATOR = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}

binary, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL", msg)


sets = [("default", {})]
# The default values name no backend: the chart refuses them, so lint and
# render the defaults plus the one required choice.
sets[0] = ("default", {"backends": {"service": {"name": "vllm"}}})
for path in sorted(glob.glob(os.path.join(ROOT, "helm", "ci", "values-*.yaml"))):
    with open(path) as f:
        sets.append((os.path.basename(path)[:-5], yaml.safe_load(f)))

chart = helm.Chart.load(CHART)
counts = {}
rules = None
for name, values in sets:
    report = helm.lint(CHART, values, strict=True, kube_version="v" + KUBE)
    bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    if bad or report.get("errors"):
        fail(f"{name}: helm lint: {bad or report['errors']}")
    chart.validate_schema(values)
    rendered = chart.render(values, name="tg", namespace="llm", is_install=True)
    n = 0
    for tpl, text in sorted(rendered.items()):
        if not tpl.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            n += 1
            kind = doc.get("kind")
            token = (values.get("adminToken") or {}).get("secretName")
            if token and kind == "Deployment":
                c = doc["spec"]["template"]["spec"]["containers"][0]
                ref = [e for e in c.get("env", []) if e["name"] == "THINKGATE_ADMIN_TOKEN"]
                if not ref or ref[0]["valueFrom"]["secretKeyRef"]["name"] != token:
                    fail(f"{name}: the admin token is not passed to the gateway")
            keys = (values.get("clientKeys") or {}).get("secretName")
            if keys and kind == "Deployment":
                spec = doc["spec"]["template"]["spec"]
                vols = [v for v in spec.get("volumes", []) if v.get("secret", {}).get("secretName") == keys]
                mounts = [m for m in spec["containers"][0].get("volumeMounts", []) if vols and m["name"] == vols[0]["name"]]
                if not mounts or mounts[0]["mountPath"] != "/etc/thinkgate-keys":
                    fail(f"{name}: the client keys Secret is not mounted at /etc/thinkgate-keys")
            gw_toml = doc.get("data", {}).get("thinkgate.toml") if kind == "ConfigMap" else None
            if keys and gw_toml is not None and "/etc/thinkgate-keys/keys.toml" not in gw_toml:
                fail(f"{name}: the config does not read the mounted client keys")
            # every TLS Secret is mounted where the rendered config reads it
            tls_mounts = [
                ((values.get("tls") or {}).get("secretName"), "/etc/thinkgate-tls", "/etc/thinkgate-tls/tls.crt"),
                ((values.get("upstreamTls") or {}).get("caSecretName"), "/etc/thinkgate-upstream-ca", "/etc/thinkgate-upstream-ca/ca.crt"),
                ((values.get("upstreamTls") or {}).get("clientSecretName"), "/etc/thinkgate-upstream-client", "/etc/thinkgate-upstream-client/tls.key"),
            ]
            for secret, path, file in tls_mounts:
                if secret and kind == "Deployment":
                    spec = doc["spec"]["template"]["spec"]
                    vols = [v for v in spec.get("volumes", []) if v.get("secret", {}).get("secretName") == secret]
                    mounts = [m for m in spec["containers"][0].get("volumeMounts", []) if vols and m["name"] == vols[0]["name"]]
                    if not mounts or mounts[0]["mountPath"] != path:
                        fail(f"{name}: Secret {secret} is not mounted at {path}")
                if secret and gw_toml is not None and file not in gw_toml:
                    fail(f"{name}: the config does not read {file}")
            if kind == "ConfigMap" and (values.get("backends") or {}).get("service", {}).get("scheme") == "https":
                if gw_toml is not None and "https://vllm.models.svc:8443" not in gw_toml:
                    fail(f"{name}: the engines' Service is not reached over https")
            tr = (values.get("tracing") or {}).get("endpoint")
            if tr and gw_toml is not None and f'endpoint = "{tr}"' not in gw_toml:
                fail(f"{name}: the config does not export traces to {tr}")
            if tr and kind == "Deployment":
                env = doc["spec"]["template"]["spec"]["containers"][0].get("env", [])
                attrs = [e.get("value", "") for e in env if e["name"] == "OTEL_RESOURCE_ATTRIBUTES"]
                if not attrs or "k8s.pod.name=$(POD_NAME)" not in attrs[0]:
                    fail(f"{name}: spans do not carry the pod's name")
            if token and kind in ("ServiceMonitor", "PodMonitor"):
                eps = doc["spec"].get("endpoints") or doc["spec"].get("podMetricsEndpoints")
                if any(e.get("authorization", {}).get("credentials", {}).get("name") != token for e in eps):
                    fail(f"{name}: {kind} scrapes without the admin token")
            if kind in OPERATOR:
                api = doc.get("apiVersion")
                if api != "monitoring.coreos.com/v1" or "spec" not in doc:
                    fail(f"{name}: {tpl}: {kind} {api}")
                if kind == "PrometheusRule":
                    rules = doc["spec"]
                continue
            try:
                kubernetes_validate.validate(doc, KUBE, strict=True)
            except Exception as e:  # ValidationError, SchemaNotFoundError
                fail(f"{name}: {tpl}: {kind}: {e}")
            if kind == "ConfigMap" and "thinkgate.toml" in doc.get("data", {}):
                toml_path = os.path.join(out, f"{name}.toml")
                with open(toml_path, "w") as f:
                    f.write(doc["data"]["thinkgate.toml"])
                r = subprocess.run(
                    [binary, "serve", "--config", toml_path, "--print-config"],
                    capture_output=True, text=True,
                )
                if r.returncode != 0:
                    fail(f"{name}: the gateway refuses the chart's config: {r.stderr.strip()}")
    counts[name] = n
    print(f"ok {name}: lint clean, {n} manifests valid for Kubernetes {KUBE}")

# Without a backend the chart must refuse to render.
try:
    chart.render({}, name="tg", namespace="llm")
    fail("default values without a backend rendered")
except helm.HelmError as e:
    print("ok refused without a backend:", str(e).splitlines()[0][:100])

if rules is None:
    fail("no PrometheusRule rendered by any value set")
else:
    rules_path = os.path.join(out, "thinkgate.rules.yaml")
    with open(rules_path, "w") as f:
        yaml.safe_dump(rules, f, sort_keys=False)
    r = subprocess.run(["promtool", "check", "rules", rules_path], capture_output=True, text=True)
    print(r.stdout.strip())
    if r.returncode != 0:
        fail(f"promtool check rules: {r.stderr.strip()}")

with open(os.path.join(ROOT, "dashboards", "thinkgate.json")) as a, open(
    os.path.join(CHART, "dashboards", "thinkgate.json")
) as b:
    if a.read() != b.read():
        fail("helm/thinkgate/dashboards/thinkgate.json differs from dashboards/thinkgate.json")

print(json.dumps({"helm": helm.helm_sdk_version(), "kube": KUBE, "manifests": counts}))
if failures:
    sys.exit(1)
