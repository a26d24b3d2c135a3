from __future__ import annotations

from pathlib import Path

from beatkeeper_devenv.settings import DevSettings


def test_defaults_follow_xdg_under_home() -> None:
    dev = DevSettings.from_env({"HOME": "/home/u"})
    assert dev.cache_dir == Path("/home/u/.cache/beatkeeper")
    assert dev.state_dir == Path("/home/u/.local/state/beatkeeper")
    assert dev.external_kubeconfig is None
    assert dev.cluster_module.name == "cluster"
    assert (dev.cluster_module / "go.mod").exists()


def test_environment_overrides() -> None:
    dev = DevSettings.from_env(
        {
            "HOME": "/home/u",
            "XDG_CACHE_HOME": "/x/cache",
            "BEATKEEPER_STATE_DIR": "/s",
            "BEATKEEPER_KUBECONFIG": "~/kc",
            "BEATKEEPER_REDIS_SERVER": "/opt/redis-server",
        }
    )
    assert dev.cache_dir == Path("/x/cache/beatkeeper")
    assert dev.state_dir == Path("/s")
    assert dev.external_kubeconfig == Path("~/kc").expanduser()
    assert dev.redis_server == "/opt/redis-server"


def test_blank_kubeconfig_means_local_cluster() -> None:
    assert (
        DevSettings.from_env({"HOME": "/h", "BEATKEEPER_KUBECONFIG": "  "}).external_kubeconfig
        is None
    )
