"""``observability:`` is validated at load, with errors naming the field."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError

BASE = """
routes:
  - id: r
    match: {path_prefix: /}
    upstream: http://127.0.0.1:9
    auth: none
"""


def test_defaults() -> None:
    cfg = parse_config(BASE)
    obs = cfg.observability
    assert obs.log_level == "info" and obs.access_log.enabled and not obs.access_log.include_query
    assert obs.access_log.destination == "stdout" and obs.metrics.enabled


def test_full_section(tmp_path: pytest.TempPathFactory) -> None:
    cfg = parse_config(
        BASE
        + f"""
observability:
  log_level: debug
  access_log:
    destination: file
    file: {tmp_path}/access.log
    fields: [time, status, interaction_id]
    include_query: true
  metrics: {{latency_histograms: false}}
"""
    )
    assert cfg.observability.access_log.fields == ("time", "status", "interaction_id")
    assert cfg.observability.metrics.latency_histograms is False


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("access_log: {fields: [time, authorization]}", "observability.access_log.fields[1]"),
        ("access_log: {fields: [time, time]}", "each field may appear only once"),
        ("access_log: {destination: file}", "needs file"),
        ("access_log: {destination: file, file: /nonexistent/dir/a.log}", "does not exist"),
        ("access_log: {file: /tmp/a.log}", "destination is stdout"),
        ("log_level: verbose", "observability.log_level"),
        ("metrics: {enable: true}", "observability.metrics.enable: unknown key"),
    ],
)
def test_bad_values_name_the_field(section: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + "observability:\n  " + section + "\n")
    assert message in str(err.value)
