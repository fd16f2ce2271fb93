from pathlib import Path

import pytest

from inferd.settings import SettingsError, load_settings


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    config = tmp_path / "inferd.yaml"
    config.write_text("port: 7000\nhost: 127.0.0.2\nmax_body_size: 100\n")
    settings = load_settings(config, {"INFERD_PORT": "7001", "INFERD_MAX_BODY_SIZE": "200"}, {"port": 7002, "host": None})
    assert settings.port == 7002
    assert settings.max_body_size == 200
    assert settings.host == "127.0.0.2"


def test_defaults_bind_loopback() -> None:
    settings = load_settings(None, {}, {})
    assert settings.host == "127.0.0.1" and settings.port == 8888 and settings.grpc_port == 8889
    assert settings.max_body_size == 20 * 1024 * 1024


def test_bad_values_name_their_origin(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="environment: port: expected int"):
        load_settings(None, {"INFERD_PORT": "eighty"}, {})
    config = tmp_path / "inferd.yaml"
    config.write_text("prot: 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'prot'"):
        load_settings(config, {}, {})
    with pytest.raises(SettingsError, match="must be a port number"):
        load_settings(None, {}, {"port": 70000})
