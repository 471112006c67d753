from __future__ import annotations

import pytest

from transports.config import Config, ConfigError, IceServer, env_ice_servers, load_config, with_env_ice_servers
from transports.main import main, overrides_from, parse_args


def write(tmp_path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_shipped_config_loads():
    cfg = load_config("config.toml")
    assert cfg.http_addr == "127.0.0.1:8080"
    assert cfg.max_calls == 400


def test_embedded_defaults_follow_the_spec():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.http_addr == "0.0.0.0:8080"
    assert cfg.ice_servers == ()


def test_every_key(tmp_path):
    cfg = load_config(write(tmp_path, """
http_addr = "127.0.0.1:9000"
sip_addr = "127.0.0.1"
udp_port = 5070
external_ip = "192.0.2.1"
rtp_start_port = 20000
rtp_end_port = 20100
media_root = "/srv/media"
recorder_root = "/srv/rec"
dump_root = "/srv/dump"
max_calls = 3
log_level = "debug"
log_format = "json"
[[ice_servers]]
urls = ["stun:127.0.0.1:3478"]
[[ice_servers]]
urls = ["turn:127.0.0.1:3478"]
username = "u"
credential = "p"
[handler]
url = "http://127.0.0.1:8090/hook"
[supervision]
provider_restarts = 5
call_shutdown_timeout = 2
[sip]
max_message_size = 4096
max_transactions = 50
tcp_max_connections = 10
tcp_idle_timeout = 60
tcp_connect_timeout = 2
tcp_write_buffer = 65536
t1 = 0.25
t2 = 2
t4 = 2.5
trying_delay = 0
[rtp]
codecs = ["PCMA", "telephone-event"]
ptime = 30
jitter_target_ms = 40
jitter_max_ms = 200
rtcp_interval = 2
relatch_after = 1
dtmf_timeout = 0.3
dtmf_duration_ms = 80
dtmf_gap_ms = 40
dtmf_max_queued = 8
"""))
    assert cfg.http_host_port == ("127.0.0.1", 9000)
    assert cfg.ice_servers[1].username == "u" and cfg.ice_servers[0].credential is None
    assert cfg.handler.url == "http://127.0.0.1:8090/hook" and cfg.handler.method == "POST"
    assert cfg.supervision.provider_restarts == 5
    assert cfg.supervision.call_shutdown_timeout == 2.0  # an integer is accepted as seconds
    assert cfg.tcp_port is None  # listens on the UDP port
    assert cfg.sip.max_message_size == 4096 and cfg.sip.t2 == 2.0 and cfg.sip.trying_delay == 0.0
    assert cfg.rtp.codecs == ("PCMA", "telephone-event") and cfg.rtp.ptime == 30
    assert cfg.rtp.dtmf_max_queued == 8


def test_shipped_config_documents_every_sip_rtp_and_webrtc_key():
    text = open("config.toml").read()
    cfg = load_config("config.toml")
    assert cfg.sip == Config().sip and cfg.rtp == Config().rtp and cfg.webrtc == Config().webrtc
    for section, table in (("sip", cfg.sip), ("rtp", cfg.rtp), ("webrtc", cfg.webrtc)):
        assert f"[{section}]" in text
        for name in table.__dataclass_fields__:
            assert f"\n{name} = " in text or f"\n# {name} = " in text, f"{section}.{name} missing from config.toml"


@pytest.mark.parametrize("text,message", [
    ("http_adr = '1.2.3.4:5'", "unknown key 'http_adr'"),
    ("[supervision]\nrestarts = 1", "unknown key 'supervision.restarts'"),
    ("[[ice_servers]]\nurl = ['stun:x']", "unknown key 'ice_servers[0].url'"),
    ("max_calls = '10'", "max_calls: expected an integer, got str"),
    ("max_calls = true", "max_calls: expected an integer, got bool"),
    ("max_calls = 0", "max_calls: must be at least 1"),
    ("log_format = 'xml'", "log_format: expected one of json, console"),
    ("http_addr = 'localhost'", "http_addr: expected ADDR:PORT"),
    ("rtp_start_port = 5000\nrtp_end_port = 4000", "rtp_start_port/rtp_end_port"),
    ("ice_servers = 'stun:x'", "ice_servers: expected an array"),
    ("max_calls = ", "not valid TOML"),
    ("tcp_port = 70000", "tcp_port: must be 0..65535"),
    ("external_ip = 'nat.example.com'", "external_ip: expected an IPv4 or IPv6 address"),
    ("rtp_start_port = 5001\nrtp_end_port = 5002", "holds no even RTP port"),
    ("[sip]\nmax_message_size = 100", "sip.max_message_size: must be 1024..1048576"),
    ("[sip]\nt1 = 1\nt2 = 0.5", "sip.t2: must be at least sip.t1"),
    ("[sip]\nmax_transactions = 0", "sip.max_transactions: must be at least 1"),
    ("[sip]\ntcp_idle_timeout = 0", "sip.tcp_idle_timeout: must be greater than 0"),
    ("[sip]\ntcp_write_buffer = 2000", "sip.tcp_write_buffer: must hold at least one message"),
    ("[rtp]\ncodecs = ['telephone-event']", "rtp.codecs: needs at least one audio codec"),
    ("[rtp]\ncodecs = ['GSM']", "rtp.codecs: unknown codec 'GSM'"),
    ("[rtp]\nptime = 25", "rtp.ptime: must be 10, 20, 30, 40 or 60"),
    ("[rtp]\njitter_target_ms = 300", "rtp.jitter_target_ms/jitter_max_ms"),
    ("[rtp]\nrtcp_interval = 0.1", "rtp.rtcp_interval: must be 1..60"),
    ("[rtp]\ndtmf_duration_ms = 10", "rtp.dtmf_duration_ms: must be 40..8000"),
    ("[rtp]\ndtmf_max_queued = 0", "rtp.dtmf_max_queued: must be at least 1"),
    ("[rtp]\nbogus = 1", "unknown key 'rtp.bogus'"),
    ("[[ice_servers]]\nurls = ['http://x']", "ice_servers[0].urls: expected stun:, stuns:, turn: or turns: URLs"),
    ("[[ice_servers]]\nurls = []", "ice_servers[0].urls: needs at least one URL"),
    ("[webrtc]\nhost_addresses = ['eth0']", "webrtc.host_addresses: expected IP addresses, got 'eth0'"),
    ("[webrtc]\nice_timeout = 0", "webrtc.ice_timeout: must be greater than 0"),
    ("[webrtc]\nmax_candidates = 0", "webrtc.max_candidates: must be at least 1"),
    ("[webrtc]\njitter_target_ms = 300", "webrtc.jitter_target_ms/jitter_max_ms"),
    ("[webrtc]\noutbound_frames = 0", "webrtc.outbound_frames: must be 1..500"),
    ("[webrtc]\ngather_with_ice_servers = 1", "webrtc.gather_with_ice_servers: expected bool, got int"),
    ("[webrtc]\nworkers = -1", "webrtc.workers: must be 0..64 (0: calls in this process), got -1"),
    ("[webrtc]\nworkers = 65", "webrtc.workers: must be 0..64"),
    ("[webrtc]\nworker_start_timeout = 0", "webrtc.worker_start_timeout: must be greater than 0"),
    ("[webrtc]\nworker_drain_timeout = -1", "webrtc.worker_drain_timeout: must be greater than 0"),
    ("[webrtc]\nworker_restarts = -1", "webrtc.worker_restarts: must be 0 or more"),
])
def test_bad_config_names_the_key_and_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_cli_flags_override_the_file(tmp_path):
    path = write(tmp_path, "http_addr = '127.0.0.1:1'\nudp_port = 1")
    args = parse_args(["--conf", str(path), "--http", "127.0.0.1:9999", "--sip", "[::1]:5080"])
    cfg = load_config(args.conf, overrides_from(args))
    assert cfg.http_addr == "127.0.0.1:9999"
    assert (cfg.sip_addr, cfg.udp_port) == ("::1", 5080)


def test_cli_exits_2_on_config_error(tmp_path, capsys):
    path = write(tmp_path, "bogus = 1")
    assert main(["--conf", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'bogus'" in err and str(path) in err


def test_ice_servers_from_the_environment():
    env = {"STUN_SERVER": "stun:127.0.0.1:3478, stun:[::1]:3478", "TURN_SERVER": "turn:127.0.0.1:3478?transport=udp",
           "TURN_USERNAME": "u", "TURN_CREDENTIAL": "p"}
    assert env_ice_servers(env) == (
        IceServer(("stun:127.0.0.1:3478", "stun:[::1]:3478")),
        IceServer(("turn:127.0.0.1:3478?transport=udp",), "u", "p"),
    )
    assert env_ice_servers({}) == () and env_ice_servers({"STUN_SERVER": " "}) == ()
    configured = Config(ice_servers=(IceServer(("stun:127.0.0.1:3478", "stun:[::1]:3478")),
                                     IceServer(("stun:127.0.0.2:3478",))))
    merged = with_env_ice_servers(configured, env)
    # the configured ones first; an entry the environment repeats is kept once
    assert [s.urls[0] for s in merged.ice_servers] == ["stun:127.0.0.1:3478", "stun:127.0.0.2:3478",
                                                       "turn:127.0.0.1:3478?transport=udp"]
    with pytest.raises(ConfigError, match="environment: TURN_SERVER is set but TURN_CREDENTIAL is not"):
        env_ice_servers({"TURN_SERVER": "turn:127.0.0.1", "TURN_USERNAME": "u"})
    with pytest.raises(ConfigError, match="environment STUN_SERVER.urls: expected stun:"):
        env_ice_servers({"STUN_SERVER": "127.0.0.1:3478"})


def test_cli_takes_ice_servers_from_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TURN_SERVER", "turn:127.0.0.1:3478")
    monkeypatch.delenv("TURN_USERNAME", raising=False)
    monkeypatch.delenv("TURN_CREDENTIAL", raising=False)
    assert main(["--conf", str(write(tmp_path, ""))]) == 2
    assert "TURN_SERVER is set but TURN_USERNAME and TURN_CREDENTIAL is not" in capsys.readouterr().err


def test_a_worker_runs_with_the_fronts_config_less_what_only_the_front_does():
    from transports.config import parse_config
    from transports.worker_pool import worker_config

    front = parse_config({"http_addr": "127.0.0.1:8080", "udp_port": 5060, "api_tokens": ["t" * 16],
                          "allowed_origins": ["https://app.example"], "max_calls": 7,
                          "register_users": [{"server": "127.0.0.1", "username": "u", "password": "p"}],
                          "ice_servers": [{"urls": ["stun:127.0.0.1:3478"]}],
                          "webrtc": {"workers": 2, "jitter_target_ms": 40}})
    worker = parse_config(worker_config(front))
    assert worker.webrtc.workers == 0 and worker.webrtc.jitter_target_ms == 40
    assert (worker.sip_addr, worker.udp_port, worker.register_users) == ("127.0.0.1", 0, ())
    assert worker.api_tokens == () and worker.allowed_origins == ()
    assert worker.max_calls == 7 and worker.ice_servers == front.ice_servers
