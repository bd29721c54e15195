"""Networking without root: conflists, -p / --network parsing, resolv.conf and hosts text,
the CNI plugin stdin of a list, the bundle's network namespace per mode."""

import pytest

from ketch.engine.network import config as C
from ketch.engine.network import plan
from ketch.errors import ConfigError


# ---- conflists ------------------------------------------------------------------

def test_default_conflist_is_a_bridge_with_portmap_firewall_tuning():
    c = C.make_conflist("ketch0", "ab" * 32, "10.89.0.0/24")
    assert c["cniVersion"] == "1.0.0" and c["name"] == "ketch0"
    assert [p["type"] for p in c["plugins"]] == ["bridge", "portmap", "firewall", "tuning"]
    br = c["plugins"][0]
    assert br["bridge"] == "ketch0" and br["isGateway"] and br["ipMasq"] and br["hairpinMode"]
    assert br["capabilities"] == {"ips": True}
    assert br["ipam"] == {"type": "host-local", "ranges": [[{"subnet": "10.89.0.0/24", "gateway": "10.89.0.1"}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}
    assert c["plugins"][1]["capabilities"] == {"portMappings": True}
    assert c["plugins"][2] == {"type": "firewall", "backend": "iptables", "ingressPolicy": "same-bridge"}
    assert C.conflist_facts(c) == ("10.89.0.0/24", "10.89.0.1", False, "ketch0")


def test_user_network_bridge_name_fits_ifnamsiz_and_internal_has_no_way_out():
    c = C.make_conflist("backend", "0123456789abcdef" * 4, "10.99.0.0/16", gateway="10.99.3.4", internal=True)
    br = c["plugins"][0]
    assert br["bridge"] == "ketch-012345678" and len(br["bridge"]) <= 15
    assert not br["isGateway"] and not br["ipMasq"] and "routes" not in br["ipam"]
    assert "portmap" not in [p["type"] for p in c["plugins"]]
    assert C.conflist_facts(c) == ("10.99.0.0/16", "10.99.3.4", True, "ketch-012345678")


@pytest.mark.parametrize("subnet,gw", [("10.1.2.3/24", None), ("fd00::/64", None), ("10.0.0.0/31", None),
                                       ("nonsense", None), ("10.1.0.0/24", "10.2.0.1"), ("10.1.0.0/24", "10.1.0.255"),
                                       ("10.1.0.0/24", "x")])
def test_bad_subnets_and_gateways_are_refused(subnet, gw):
    with pytest.raises(ConfigError):
        C.make_conflist("n", "0" * 64, subnet, gw)


def test_plugin_stdin_follows_the_spec_for_lists():
    c = C.make_conflist("net1", "1" * 64, "10.89.5.0/24")
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.89.5.2/24"}]}
    rc = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}], "ips": ["10.89.5.9"]}
    br = C.plugin_config(c, c["plugins"][0], rc, None, "/run/x/ipam")
    assert br["name"] == "net1" and br["cniVersion"] == "1.0.0" and "capabilities" not in br
    assert br["runtimeConfig"] == {"ips": ["10.89.5.9"]}  # only what the plugin declares
    assert br["ipam"]["dataDir"] == "/run/x/ipam" and "dataDir" not in c["plugins"][0]["ipam"]
    assert "prevResult" not in br
    pm = C.plugin_config(c, c["plugins"][1], rc, prev)
    assert pm["runtimeConfig"] == {"portMappings": rc["portMappings"]} and pm["prevResult"] == prev
    fw = C.plugin_config(c, c["plugins"][2], rc, prev)
    assert "runtimeConfig" not in fw and fw["prevResult"] == prev


@pytest.mark.parametrize("name", ["host", "none", "bridge", "default", "container:x", "-x", "a/b", "", "x" * 65])
def test_reserved_or_bad_network_names(name):
    with pytest.raises(ConfigError):
        C.valid_network_name(name)


# ---- flags ------------------------------------------------------------------------

@pytest.mark.parametrize("text,want", [
    (None, ("bridge", "ketch0")), ("bridge", ("bridge", "ketch0")), ("default", ("bridge", "ketch0")),
    ("host", ("host", None)), ("none", ("none", None)), ("net1", ("bridge", "net1")),
    ("container:web", ("container", "web"))])
def test_network_modes(text, want):
    assert C.parse_network_mode(text) == want


@pytest.mark.parametrize("text", ["container:", "a b", "../x"])
def test_bad_network_modes(text):
    with pytest.raises(ConfigError):
        C.parse_network_mode(text)


@pytest.mark.parametrize("spec,want", [
    ("8080:80", [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    ("127.0.0.1:8080:80/udp", [{"hostPort": 8080, "containerPort": 80, "protocol": "udp", "hostIP": "127.0.0.1"}]),
    ("[::1]:53:53/udp", [{"hostPort": 53, "containerPort": 53, "protocol": "udp", "hostIP": "::1"}]),
    ("9000-9001:80-81", [{"hostPort": 9000, "containerPort": 80, "protocol": "tcp"},
                         {"hostPort": 9001, "containerPort": 81, "protocol": "tcp"}]),
])
def test_publish_specs(spec, want):
    assert C.parse_publish(spec) == want


@pytest.mark.parametrize("spec", ["80", "0:80", "70000:80", "a:80", "8080:80/sctp", "1.2.3:80:80",
                                  "9000-8999:80-81", "9000-9002:80-81", "1:2:3:4", ""])
def test_bad_publish_specs(spec):
    with pytest.raises(ConfigError) as e:
        C.parse_publish(spec)
    assert "port specification" in str(e.value)


def test_a_host_port_published_twice_is_refused():
    with pytest.raises(ConfigError):
        C.parse_publish_all(["8080:80", "8080:81"])
    assert len(C.parse_publish_all(["8080:80", "8080:80/udp", "127.0.0.1:8081:80"])) == 3


def test_ip_and_dns_and_add_host_checks():
    assert C.parse_ip("10.89.3.7", "10.89.3.0/24") == "10.89.3.7"
    for bad in ("10.89.4.7", "x", "fd00::1"):
        with pytest.raises(ConfigError):
            C.parse_ip(bad, "10.89.3.0/24")
    assert C.parse_dns("1.1.1.1") == "1.1.1.1"
    with pytest.raises(ConfigError):
        C.parse_dns("resolver.example")
    assert C.parse_add_host("db:10.0.0.5") == ("db", "10.0.0.5")
    for bad in ("db", "db:", ":1.2.3.4", "db:notanip"):
        with pytest.raises(ConfigError):
            C.parse_add_host(bad)


# ---- /etc files -------------------------------------------------------------------

HOST = ("# managed\nsearch corp.example\nnameserver 127.0.0.53\nnameserver 10.0.0.2\n"
        "nameserver ::1\noptions edns0 trust-ad\n")


def test_resolv_conf_bridge_drops_loopback_resolvers():
    out = C.resolv_conf(HOST, "bridge").splitlines()
    assert [ln for ln in out if ln.startswith("nameserver")] == ["nameserver 10.0.0.2"]
    assert "search corp.example" in out and "options edns0 trust-ad" in out


def test_resolv_conf_bridge_falls_back_when_only_loopback_remains():
    out = C.resolv_conf("nameserver 127.0.0.53\n", "bridge").splitlines()
    assert out == ["nameserver 8.8.8.8", "nameserver 8.8.4.4"]


@pytest.mark.parametrize("host", ["nameserver 127.1.2.3\nnameserver ::1\nsearch x\n", ""])
def test_resolv_conf_bridge_drops_every_loopback_and_falls_back(host):
    ns = [ln for ln in C.resolv_conf(host, "bridge").splitlines() if ln.startswith("nameserver")]
    assert ns == ["nameserver 8.8.8.8", "nameserver 8.8.4.4"]
    assert C.resolv_conf("nameserver ::1\nnameserver 2001:db8::1\n", "bridge") == "nameserver 2001:db8::1\n"


def test_resolv_conf_host_is_the_hosts_file():
    assert C.resolv_conf(HOST, "host") == HOST


def test_resolv_conf_none_has_no_nameserver():
    out = C.resolv_conf(HOST, "none")
    assert "nameserver" not in out and "search corp.example" in out


def test_resolv_conf_flags_replace_the_hosts_lines():
    out = C.resolv_conf(HOST, "bridge", dns=["10.9.9.9", "10.9.9.8"], search=["a.example", "b.example"],
                        options=["ndots:3"]).splitlines()
    assert [ln for ln in out if ln.startswith("nameserver")] == ["nameserver 10.9.9.9", "nameserver 10.9.9.8"]
    assert [ln for ln in out if ln.startswith("search")] == ["search a.example b.example"]
    assert [ln for ln in out if ln.startswith("options")] == ["options ndots:3"]
    host = C.resolv_conf(HOST, "host", dns=["10.9.9.9"]).splitlines()
    assert [ln for ln in host if ln.startswith("nameserver")] == ["nameserver 10.9.9.9"]
    none = C.resolv_conf("", "none", dns=["10.9.9.9"])
    assert none == "nameserver 10.9.9.9\n"


def test_hosts_per_mode():
    b = C.hosts_file("bridge", "box", "10.89.0.5", ["db:10.1.2.3", "gw:host-gateway"], gateway="10.89.0.1")
    lines = b.splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost" and "10.89.0.5\tbox" in lines
    assert lines[-2:] == ["10.1.2.3\tdb", "10.89.0.1\tgw"]
    assert "127.0.0.1\tbox" in C.hosts_file("none", "box").splitlines()
    with pytest.raises(ConfigError):
        C.hosts_file("none", "box", extra=["nocolon"])
    assert C.hosts_file("host", "h", host_text="1.2.3.4 x", extra=["db:10.1.2.3"]) == "1.2.3.4 x\n10.1.2.3\tdb\n"


def test_edit_hosts_adds_and_removes_peer_lines_only():
    base = C.hosts_file("bridge", "me", "10.89.1.2")
    a = C.peer_line("10.89.1.3", "web", "f" * 64)
    assert a == "10.89.1.3\tweb ffffffffffff\n"
    t = C.edit_hosts(base, add=[a])
    assert t == base + a and C.edit_hosts(t, add=[a]) == t  # idempotent
    user = t + "192.0.2.1\tmine\n"
    assert C.edit_hosts(user, remove=[a]) == base + "192.0.2.1\tmine\n"
    assert C.edit_hosts("no newline", add=[a]) == "no newline\n" + a


# ---- the bundle per mode -----------------------------------------------------------

def _cfg(userns=False):
    from ketch.spec.default import default_spec
    cfg = default_spec()
    if userns:
        cfg["linux"]["namespaces"].append({"type": "user"})
    return cfg


def _net(mode, **kw):
    d = {"mode": mode, "network": "ketch0" if mode == "bridge" else None, "ports": [], "dns": [],
         "dns_search": [], "dns_options": []}
    d.update(kw)
    return d


def test_apply_joins_the_engines_namespace_or_the_hosts():
    cfg = _cfg()
    plan.apply(cfg, _net("bridge"), "/run/k/networks/netns/abc")
    assert {"type": "network", "path": "/run/k/networks/netns/abc"} in cfg["linux"]["namespaces"]
    assert [n for n in cfg["linux"]["namespaces"] if n["type"] == "network"] == \
        [{"type": "network", "path": "/run/k/networks/netns/abc"}]
    cfg = _cfg()
    plan.apply(cfg, _net("host"), "/unused")
    assert "network" not in [n["type"] for n in cfg["linux"]["namespaces"]]
    cfg = _cfg()
    plan.apply(cfg, _net("container", container="x", target_mode="host"), "/unused")
    assert "network" not in [n["type"] for n in cfg["linux"]["namespaces"]]


def test_apply_binds_sys_in_a_user_namespace():
    cfg = _cfg(userns=True)
    plan.apply(cfg, _net("bridge"), "/p")
    sys_ = [m for m in cfg["mounts"] if m["destination"] == "/sys"][0]
    assert sys_["type"] == "none" and sys_["source"] == "/sys" and "rbind" in sys_["options"] and "ro" in sys_["options"]
    cfg = _cfg()
    plan.apply(cfg, _net("bridge"), "/p")
    assert [m for m in cfg["mounts"] if m["destination"] == "/sys"][0]["type"] == "sysfs"


def test_host_config_shapes():
    net = _net("bridge", network="net1", ports=C.parse_publish_all(["127.0.0.1:8080:80", "53:53/udp"]),
               dns=["10.0.0.9"])
    hc = plan.host_config(net, {})
    assert hc["NetworkMode"] == "net1" and hc["Dns"] == ["10.0.0.9"]
    assert hc["PortBindings"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}],
                                  "53/udp": [{"HostIp": "", "HostPort": "53"}]}
    assert plan.host_config(_net("bridge"), {})["NetworkMode"] == "bridge"
    ns = plan.network_settings(net, {"netns": "/n", "ip": "10.89.1.2", "prefix": 24, "gateway": "10.89.1.1",
                                     "mac": "aa"})
    assert ns["Networks"]["net1"]["IPAddress"] == "10.89.1.2" and ns["SandboxKey"] == "/n"
    assert ns["Ports"]["80/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": "8080"}]
