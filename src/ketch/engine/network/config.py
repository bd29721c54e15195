"""Pure parts of networking: conflists, -p and --network specs, resolv.conf and hosts text.

Nothing here touches the host; everything is unit-tested without root.
"""

from ketch.errors import ConfigError
from ketch.engine.util import LazyModule, LazyRe

ipaddress = LazyModule("ipaddress")  # imported at first use: a run needs none

CNI_VERSION = "1.0.0"
DEFAULT_NETWORK = "ketch0"
DEFAULT_SUBNET = "10.89.0.0/24"
BRIDGE_ALIASES = ("bridge", "default")
IFNAME = "eth0"
NAME_RE = LazyRe(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
# Subnets ketch hands out to `network create` without --subnet: next to the
# default, away from podman's 10.88.0.0/16 and Docker's 172.17.0.0/16.
AUTO_SUBNETS = ("10.89.%d.0/24", range(1, 256))


def valid_network_name(name):
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > 64:
        raise ConfigError(f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    if name in ("host", "none") or name in BRIDGE_ALIASES or name.startswith("container:"):
        raise ConfigError(f"network name {name!r} is reserved")
    return name


def bridge_name(name, net_id):
    """The host bridge of a network: IFNAMSIZ leaves 15 characters."""
    return name if name == DEFAULT_NETWORK else "ketch-" + net_id[:9]


def subnet_and_gateway(subnet, gateway=None):
    """(subnet "a.b.c.d/n", gateway "a.b.c.e"): the gateway defaults to the first host address."""
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError as e:
        raise ConfigError(f"invalid subnet {subnet!r}: {e}") from None
    if net.version != 4:
        raise ConfigError(f"invalid subnet {subnet!r}: only IPv4 subnets are supported")
    if net.prefixlen > 30:
        raise ConfigError(f"invalid subnet {subnet!r}: too small for a gateway and a container (/30 at most)")
    if gateway:
        try:
            gw = ipaddress.ip_address(gateway)
        except ValueError:
            raise ConfigError(f"invalid gateway {gateway!r}: not an IP address") from None
        if gw not in net or gw in (net.network_address, net.broadcast_address):
            raise ConfigError(f"invalid gateway {gateway!r}: not a host address of {subnet}")
    else:
        gw = net.network_address + 1
    return str(net), str(gw)


def make_conflist(name, net_id, subnet, gateway=None, internal=False):
    """The CNI network configuration list of a ketch bridge network.

    bridge + host-local make the veth and the address; portmap publishes
    ports (-p); firewall with ingressPolicy same-bridge drops traffic from
    one ketch bridge to another (Docker's isolation between networks);
    tuning is the hook for sysctls.  An --internal network has no gateway
    address on the host, no masquerade, no default route and no portmap.
    """
    subnet, gateway = subnet_and_gateway(subnet, gateway)
    ipam = {"type": "host-local", "ranges": [[{"subnet": subnet, "gateway": gateway}]]}
    if not internal:
        ipam["routes"] = [{"dst": "0.0.0.0/0"}]
    plugins = [{"type": "bridge", "bridge": bridge_name(name, net_id), "isGateway": not internal,
                "ipMasq": not internal, "hairpinMode": True, "capabilities": {"ips": True}, "ipam": ipam}]
    if not internal:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    plugins.append({"type": "firewall", "backend": "iptables", "ingressPolicy": "same-bridge"})
    plugins.append({"type": "tuning"})
    return {"cniVersion": CNI_VERSION, "name": name, "plugins": plugins}


def conflist_facts(conflist):
    """(subnet, gateway, internal, bridge) read back from a conflist."""
    br = next((p for p in conflist.get("plugins", ()) if p.get("type") == "bridge"), {})
    rng = ((br.get("ipam") or {}).get("ranges") or [[{}]])[0][0]
    return rng.get("subnet"), rng.get("gateway"), not br.get("isGateway", False), br.get("bridge")


def plugin_config(conflist, plugin, runtime_config=None, prev_result=None, ipam_dir=None):
    """The stdin of one plugin of a list, as the CNI spec's section on lists builds it:
    the list's name and cniVersion, the plugin's own keys, runtimeConfig for the
    capabilities the plugin declares, and the previous plugin's result."""
    conf = {k: v for k, v in plugin.items() if k != "capabilities"}
    conf["name"] = conflist["name"]
    conf["cniVersion"] = conflist.get("cniVersion", CNI_VERSION)
    if ipam_dir and isinstance(conf.get("ipam"), dict) and conf["ipam"].get("type") == "host-local":
        conf["ipam"] = dict(conf["ipam"], dataDir=ipam_dir)
    caps = plugin.get("capabilities") or {}
    rc = {k: v for k, v in (runtime_config or {}).items() if caps.get(k)}
    if rc:
        conf["runtimeConfig"] = rc
    if prev_result is not None:
        conf["prevResult"] = prev_result
    return conf


# -------------------------------------------------------------- flags

def parse_network_mode(text):
    """--network -> (mode, arg): ("bridge", network name), ("host", None), ("none", None),
    ("container", name or id)."""
    if text is None or text == "" or text in BRIDGE_ALIASES:
        return "bridge", DEFAULT_NETWORK
    if text in ("host", "none"):
        return text, None
    if text.startswith("container:"):
        ref = text[len("container:"):]
        if not ref:
            raise ConfigError(f"invalid --network {text!r}: want container:NAME")
        return "container", ref
    if not NAME_RE.match(text):
        raise ConfigError(f"invalid --network {text!r}: want none, host, bridge, NAME or container:NAME")
    return "bridge", text


def _port(text, what, spec):
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"invalid port specification {spec!r}: {what} {text!r} is not a port (1-65535)")
    return int(text)


def parse_publish(spec):
    """-p [IP:]HOSTPORT:PORT[/tcp|udp] -> CNI portMappings entries (a range HOST1-HOST2:PORT1-PORT2
    expands to one entry per port)."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"invalid port specification {spec!r}")
    rest, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise ConfigError(f"invalid port specification {spec!r}: protocol {proto!r} is not tcp or udp")
    host_ip = ""
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ConfigError(f"invalid port specification {spec!r}: unclosed [")
        host_ip, rest = rest[1:end], rest[end + 1:].lstrip(":")
    else:
        parts = rest.split(":")
        if len(parts) == 3:
            host_ip, rest = parts[0], ":".join(parts[1:])
        elif len(parts) > 3:
            raise ConfigError(f"invalid port specification {spec!r}: want [IP:]HOSTPORT:PORT[/PROTO]")
    if host_ip:
        try:
            host_ip = str(ipaddress.ip_address(host_ip))
        except ValueError:
            raise ConfigError(f"invalid port specification {spec!r}: {host_ip!r} is not an IP address") from None
    hp, sep, cp = rest.partition(":")
    if not sep:
        raise ConfigError(f"invalid port specification {spec!r}: want [IP:]HOSTPORT:PORT[/PROTO] "
                          "(a host port is required)")
    hosts = _range(hp, "host port", spec)
    conts = _range(cp, "container port", spec)
    if len(hosts) != len(conts):
        raise ConfigError(f"invalid port specification {spec!r}: the host and container ranges differ in size")
    out = []
    for h, c in zip(hosts, conts):
        m = {"hostPort": h, "containerPort": c, "protocol": proto}
        if host_ip:
            m["hostIP"] = host_ip
        out.append(m)
    return out


def _range(text, what, spec):
    a, dash, b = text.partition("-")
    lo = _port(a, what, spec)
    hi = _port(b, what, spec) if dash else lo
    if hi < lo:
        raise ConfigError(f"invalid port specification {spec!r}: {what} range {text!r} is reversed")
    return list(range(lo, hi + 1))


def parse_publish_all(specs):
    out, seen = [], set()
    for s in specs or ():
        for m in parse_publish(s):
            key = (m.get("hostIP", ""), m["hostPort"], m["protocol"])
            if key in seen:
                raise ConfigError(f"invalid port specification {s!r}: host port {m['hostPort']}/{m['protocol']} "
                                  "is published twice")
            seen.add(key)
            out.append(m)
    return out


def parse_ip(text, subnet=None):
    try:
        ip = ipaddress.IPv4Address(text)
    except ValueError:
        raise ConfigError(f"invalid --ip {text!r}: not an IPv4 address") from None
    if subnet is not None and ip not in ipaddress.ip_network(subnet):
        raise ConfigError(f"invalid --ip {text}: not in the network's subnet {subnet}")
    return str(ip)


def parse_add_host(text):
    name, sep, ip = text.partition(":")
    if not sep or not name or not ip:
        raise ConfigError(f"invalid --add-host {text!r}: want name:ip")
    if ip != "host-gateway":
        try:
            ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            raise ConfigError(f"invalid --add-host {text!r}: {ip!r} is not an IP address") from None
    return name, ip.strip("[]")


def parse_dns(text):
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(f"invalid --dns {text!r}: not an IP address") from None


# -------------------------------------------------------------- /etc files

# What Docker falls back to when the host only lists resolvers on its own
# loopback (systemd-resolved, dnsmasq): those addresses mean nothing inside
# the container's network namespace.
FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")

HOSTS_HEAD = ("127.0.0.1\tlocalhost\n"
              "::1\tlocalhost ip6-localhost ip6-loopback\n"
              "fe00::0\tip6-localnet\n"
              "ff00::0\tip6-mcastprefix\n"
              "ff02::1\tip6-allnodes\n"
              "ff02::2\tip6-allrouters\n")


def _is_loopback(addr):
    try:
        return ipaddress.ip_address(addr.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def resolv_conf(host_text, mode, dns=(), search=(), options=()):
    """A container's /etc/resolv.conf as Docker writes it.

    bridge: the host's without loopback nameservers (they are the host's own
    resolver, unreachable from the container's namespace), Google's public
    resolvers when none remain; host: the host's file unchanged (its
    loopback resolver is reachable); none: no nameserver at all (the
    container has only lo).  --dns, --dns-search, --dns-option replace the
    host's nameserver, search and options lines.
    """
    lines = host_text.splitlines()
    if mode == "host" and not (dns or search or options):
        return host_text if host_text.endswith("\n") or not host_text else host_text + "\n"
    out = []
    for line in lines:
        f = line.split()
        key = f[0] if f else ""
        if key == "nameserver":
            if dns or mode == "none" or (mode != "host" and len(f) > 1 and _is_loopback(f[1])):
                continue
        elif key in ("search", "domain") and search:
            continue
        elif key == "options" and options:
            continue
        out.append(line)
    if search:
        out.append("search " + " ".join(search))
    if options:
        out.append("options " + " ".join(options))
    ns = list(dns)
    if not ns and mode == "bridge" and not any(ln.split()[:1] == ["nameserver"] for ln in out):
        ns = list(FALLBACK_NAMESERVERS)
    out += [f"nameserver {n}" for n in ns]
    text = "\n".join(out).strip("\n")
    return text + "\n" if text else ""


def hosts_file(mode, hostname, ip=None, extra=(), host_text=None, gateway=None):
    """A container's /etc/hosts: host mode copies the host's file; otherwise the
    localhost lines and the hostname on the container's address (on 127.0.0.1
    without one: --network none, or before it starts); then --add-host lines."""
    if mode == "host":
        text = host_text or ""
        if text and not text.endswith("\n"):
            text += "\n"
    else:
        text = HOSTS_HEAD + f"{ip or '127.0.0.1'}\t{hostname}\n"
    for e in extra:
        name, addr = parse_add_host(e)
        if addr == "host-gateway":
            addr = gateway or "127.0.0.1"
        text += f"{addr}\t{name}\n"
    return text


def peer_line(ip, name, cid):
    return f"{ip}\t{name} {cid[:12]}\n"


def edit_hosts(text, add=(), remove=()):
    """`text` without the lines in `remove`, then the lines of `add` not already there
    (in place of Docker's embedded DNS: peers on a user network by name)."""
    drop = set(remove) | set(add)
    kept = [ln for ln in text.splitlines(True) if ln not in drop and ln.rstrip("\n") + "\n" not in drop]
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    return "".join(kept) + "".join(add)
