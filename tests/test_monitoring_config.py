"""infra/prometheus/: the configs ``fleetops up --with-prometheus`` renders, checked by the real
tools (``promtool`` from Debian's prometheus, ``amtool`` from prometheus-alertmanager), and the
alert rules unit-tested with ``promtool test rules`` over synthetic series."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import yaml

from fleetops.settings import Settings
from starters.monitoring import INFRA, MonitoringPorts, commands, render
from tests.helpers import require_binary


def rendered(tmp_path: Path, token: str | None = "tok-123") -> Path:
    s = Settings.model_validate(
        {"state_dir": tmp_path / "state", "alerts": {"port": 19095, "token": token}}
    )
    return render(s, MonitoringPorts(prometheus=19090, alertmanager=19093), rule_for="2s")


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_rendered_configs_pass_promtool_and_amtool(tmp_path: Path) -> None:
    out = rendered(tmp_path)
    run(require_binary("promtool", hint="apt-get install prometheus"), "check", "config",
        str(out / "prometheus.yml"))  # fmt: skip
    run(require_binary("amtool", hint="apt-get install prometheus-alertmanager"),
        "check-config", str(out / "alertmanager.yml"))  # fmt: skip

    prom = yaml.safe_load((out / "prometheus.yml").read_text())
    [files] = [sd["files"] for sd in prom["scrape_configs"][0]["file_sd_configs"]]
    assert files == [str((tmp_path / "state" / "prometheus" / "targets" / "*.json").resolve())]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "127.0.0.1:19093"
    ]
    am = yaml.safe_load((out / "alertmanager.yml").read_text())
    hook = am["receivers"][0]["webhook_configs"][0]
    assert hook["url"] == "http://127.0.0.1:19095/alerts"
    assert am["route"]["group_by"] == ["agent"]
    token_file = Path(hook["http_config"]["authorization"]["credentials_file"])
    assert token_file.read_text() == "tok-123"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    rules = yaml.safe_load((out / "rules" / "agents.yml").read_text())
    assert {r["for"] for r in rules["groups"][0]["rules"]} == {"2s"}
    argv = commands(out, MonitoringPorts(prometheus=19090, alertmanager=19093))
    assert "--cluster.listen-address=" in argv["alertmanager"]


def test_without_a_token_alertmanager_sends_no_authorization(tmp_path: Path) -> None:
    rendered(tmp_path)  # a token file from an earlier run with a token
    out = rendered(tmp_path, token=None)
    hook = yaml.safe_load((out / "alertmanager.yml").read_text())["receivers"][0]
    assert "http_config" not in hook["webhook_configs"][0]
    assert not (out / "alerts.token").exists()


RULE_TESTS = """
rule_files: [{rules}]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      # agent "bad": 20 of 100 requests per 15 s fail; agent "good": none fail.
      - series: 'agent_requests_total{{agent="bad", endpoint="/execute", status="200"}}'
        values: '0+100x20'
      - series: 'agent_errors_total{{agent="bad"}}'
        values: '0+20x20'
      - series: 'agent_requests_total{{agent="good", endpoint="/execute", status="200"}}'
        values: '0+100x20'
      - series: 'agent_errors_total{{agent="good"}}'
        values: '0+0x20'
      - series: 'up{{job="fleetops-agents", agent="gone", replica="0"}}'
        values: '0x20'
      - series: 'agent_request_duration_seconds_bucket{{agent="slow", le="1"}}'
        values: '0+1x20'
      - series: 'agent_request_duration_seconds_bucket{{agent="slow", le="5"}}'
        values: '0+100x20'
      - series: 'agent_request_duration_seconds_bucket{{agent="slow", le="+Inf"}}'
        values: '0+100x20'
      - series: 'agent_tokens_total{{agent="burner", direction="output"}}'
        values: '0+60000x40'
    alert_rule_test:
      - eval_time: 2m
        alertname: AgentHighErrorRate
        exp_alerts:
          - exp_labels: {{agent: bad, severity: error, category: errors}}
            exp_annotations:
              summary: "bad: 20% of requests fail"
              description: "More than 5% of /execute requests answered 5xx for 30 s."
      - eval_time: 3m
        alertname: AgentDown
        exp_alerts:
          - exp_labels: {{agent: gone, severity: critical, category: availability}}
            exp_annotations:
              summary: "gone: no replica answers"
              description: "Every scrape target of the agent has been down for 30 s."
      - eval_time: 4m
        alertname: AgentHighLatencyP95
        exp_alerts:
          - exp_labels: {{agent: slow, severity: warning, category: latency}}
            exp_annotations:
              summary: "slow: p95 latency 4.798s"
              description: "The 95th percentile of /execute latency is above 2 s for 1 min."
      - eval_time: 9m
        alertname: AgentTokenBurn
        exp_alerts:
          - exp_labels: {{agent: burner, severity: warning, category: cost}}
            exp_annotations:
              summary: "burner: 240k tokens per minute"
              description: "The agent burns more than 100k LLM tokens per minute for 5 min."
"""


def test_alert_rules_fire_per_agent_on_synthetic_series(tmp_path: Path) -> None:
    promtool = require_binary("promtool", hint="apt-get install prometheus")
    tests = tmp_path / "rules_test.yml"
    tests.write_text(RULE_TESTS.format(rules=INFRA / "rules" / "agents.yml"))
    run(promtool, "test", "rules", str(tests))
