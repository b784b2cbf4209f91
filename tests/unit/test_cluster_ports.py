"""Fixed host ports of clusters provisioned together must not overlap (checked before anything)."""

from pathlib import Path

import pytest

from cdtasks.cluster import check_port_ranges
from cdtasks.config import ConfigError, load


def _settings(tmp_path: Path, env: str, nodes: str, base: int):
    (tmp_path / f"{env}.env").write_text(
        f"NODES={nodes}\nCD_NODE={nodes.split(',')[0]}\nLAB_PORT_BASE={base}\n"
    )
    return load(env, environ={}, env_dir=tmp_path)


def test_overlapping_bases_are_refused_naming_both(tmp_path):
    test = _settings(tmp_path, "test", "a-1,a-2,a-3", 41000)
    prod = _settings(tmp_path, "prod", "b-1,b-2,b-3", 41020)  # test needs 41000..41029
    with pytest.raises(ConfigError, match="test .*41000.* and prod .*41020.* overlap"):
        check_port_ranges([test, prod])


def test_disjoint_or_automatic_ports_pass(tmp_path):
    test = _settings(tmp_path, "test", "a-1,a-2,a-3", 41000)
    prod = _settings(tmp_path, "prod", "b-1,b-2,b-3", 41030)
    check_port_ranges([test, prod])
    auto = _settings(tmp_path, "prod", "b-1,b-2,b-3", 0)
    check_port_ranges([test, auto, auto])
