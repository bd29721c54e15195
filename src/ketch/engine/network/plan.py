"""A container's network, from `container create` to its monitor: the glue between
ketch.engine.containers and ketch.engine.network.

    net = plan.prepare(store, opts, cid)          # create: validate, pick the mode
    files = plan.write_files(net, cdir, ...)     # create: resolv.conf, hostname, hosts
    plan.apply(config, net)                      # create: the bundle's network namespace
    plan.up(store, rec)                          # monitor, before the runtime's create
    plan.down(store, cid)                        # whenever the runtime container goes
"""

import os

from ketch.errors import ConfigError, InvalidState, KetchError
from ketch.engine.network import config as C

_NET_FILES = ("/etc/resolv.conf", "/etc/hostname", "/etc/hosts")


def prepare(store, o, cid):
    """The network part of a container's creation options, checked; a dict kept in its record."""
    if os.geteuid() != 0:
        from ketch.engine import usernet
        return usernet.prepare(store, o, cid)
    mode, arg = C.parse_network_mode(o.get("network"))
    ports = C.parse_publish_all(o.get("publish") or ())
    dns = [C.parse_dns(d) for d in o.get("dns") or ()]
    for h in o.get("add_hosts") or ():
        C.parse_add_host(h)
    net = {"mode": mode, "network": None, "ports": ports, "ip": o.get("ip"), "dns": dns,
           "dns_search": list(o.get("dns_search") or ()), "dns_options": list(o.get("dns_options") or ()),
           "hostname": None, "container": None}
    if o.get("ip") and (mode != "bridge" or arg == C.DEFAULT_NETWORK):
        raise ConfigError("--ip is only supported on user-defined networks (Docker's rule)")
    if mode == "bridge":
        conf = store.networks.get(arg)
        net["network"] = conf["name"]
        if o.get("ip"):
            net["ip"] = C.parse_ip(o["ip"], C.conflist_facts(conf)[0])
    elif ports:
        raise ConfigError(f"-p publishes ports of a bridge network; --network {o.get('network')} has none")
    if mode == "host":
        import socket
        net["hostname"] = socket.gethostname()
    if mode == "container":
        if o.get("hostname"):
            raise ConfigError("conflicting options: --hostname and --network container:NAME")
        if dns or o.get("dns_search") or o.get("dns_options") or o.get("add_hosts"):
            raise ConfigError("conflicting options: --dns/--dns-search/--dns-option/--add-host and "
                              "--network container:NAME (the files are the other container's)")
        target = store.resolve(arg)
        if target == cid:
            raise ConfigError("a container cannot join its own network namespace")
        trec = store.state(target)
        tnet = trec.get("KetchNetwork") or {}
        if tnet.get("mode") == "container":  # join what the other one joined
            target = tnet["container"]
            trec = store.state(target)
            tnet = trec.get("KetchNetwork") or {}
        net["container"] = target
        net["hostname"] = trec["Config"]["Hostname"]
        net["target_mode"] = tnet.get("mode", "none")
        net["files"] = {"/etc/resolv.conf": trec["ResolvConfPath"], "/etc/hostname": trec["HostnamePath"],
                        "/etc/hosts": trec["HostsPath"]}
    return net


def write_files(net, cdir, hostname, uid, gid, mount_label="", add_hosts=(), resolv_source=None,
                hosts_source=None):
    """<cdir>/{resolv.conf,hostname,hosts} as Docker writes them for the mode (the other
    container's files for container:NAME).  Returns {dest: host path}."""
    from ketch.engine.util import atomic_write
    from ketch.linux import label
    if net["mode"] == "container":
        return dict(net["files"])
    mode = net["mode"]
    resolv = C.resolv_conf(_read_host_file(resolv_source or "/etc/resolv.conf"), mode, net["dns"],
                           net["dns_search"], net["dns_options"])
    host_hosts = None
    if mode == "host":
        host_hosts = _read_host_file(hosts_source or "/etc/hosts")
    # In bridge mode the address comes at start (the monitor rewrites hosts then).
    files = {"/etc/resolv.conf": ("resolv.conf", resolv), "/etc/hostname": ("hostname", hostname + "\n"),
             "/etc/hosts": ("hosts", C.hosts_file(mode, hostname, None, add_hosts, host_hosts))}
    out = {}
    for dest, (name, text) in files.items():
        p = os.path.join(cdir, name)
        atomic_write(p, text, 0o644)
        if (uid, gid) != (os.geteuid(), os.getegid()):
            os.chown(p, uid, gid)
        label.set_file_label(p, mount_label)
        out[dest] = p
    return out


def _read_host_file(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def apply(config, net, netns_path):
    """The bundle's network namespace: the engine's bound namespace (bridge, none), the
    other container's (container:NAME), or none of its own (host)."""
    if "usernet" in net:
        from ketch.engine import usernet
        return usernet.apply(config, net)
    linux = config["linux"]
    nss = [n for n in linux["namespaces"] if n["type"] != "network"]
    mode = net["mode"]
    if mode == "container" and net.get("target_mode") == "host":
        mode = "host"
    if mode != "host":
        nss.append({"type": "network", "path": netns_path})
    linux["namespaces"] = nss
    if any(n["type"] == "user" for n in nss):
        # A user namespace may mount sysfs only in a network namespace it owns,
        # and these are the host's user namespace's: bind the host's read-only.
        for m in config["mounts"]:
            if m["destination"] == "/sys" and m["type"] == "sysfs":
                m.update(type="none", source="/sys", options=["rbind", "nosuid", "noexec", "nodev", "ro"])
    if mode == "container":
        # The files are the other container's: never make them read-only for it.
        for m in config["mounts"]:
            if m["destination"] in _NET_FILES and m["type"] == "bind":
                m["options"] = [x for x in m["options"] if x != "ro"]


def host_config(net, o):
    """The HostConfig keys Docker's inspect shows for the network options."""
    mode = {"bridge": net["network"] if net["network"] != C.DEFAULT_NETWORK else "bridge", "host": "host",
            "none": "none", "container": f"container:{net.get('container')}"}[net["mode"]]
    bindings = {}
    for m in net["ports"]:
        bindings.setdefault(f"{m['containerPort']}/{m['protocol']}", []).append(
            {"HostIp": m.get("hostIP", ""), "HostPort": str(m["hostPort"])})
    return {"NetworkMode": mode, "PortBindings": bindings, "Dns": list(net["dns"]),
            "DnsSearch": list(net["dns_search"]), "DnsOptions": list(net["dns_options"])}


def network_settings(net, att=None):
    """Docker's NetworkSettings: the address the container got while it runs."""
    out = {"SandboxKey": "", "Ports": {}, "Networks": {}, "IPAddress": "", "Gateway": ""}
    for m in net["ports"]:
        out["Ports"].setdefault(f"{m['containerPort']}/{m['protocol']}", []).append(
            {"HostIp": m.get("hostIP", "0.0.0.0"), "HostPort": str(m["hostPort"])})
    if att:
        out["SandboxKey"] = att.get("netns", "")
        if att.get("ip"):
            name = net["network"]
            out["Networks"][name] = {"IPAddress": att["ip"], "IPPrefixLen": att.get("prefix", 0),
                                     "Gateway": att.get("gateway") or "", "MacAddress": att.get("mac", ""),
                                     "NetworkID": att.get("network_id", "")}
            if name == C.DEFAULT_NETWORK:
                out["IPAddress"], out["Gateway"] = att["ip"], att.get("gateway") or ""
    return out


def up(store, rec):
    """Attach a container being started (in its monitor); returns its NetworkSettings."""
    net = rec.get("KetchNetwork")
    if not net:
        return None
    if "usernet" in net:  # rootless: the tool starts with the init (usernet.start)
        from ketch.engine import usernet
        return usernet.settings(network_settings(net), net)
    mode = net["mode"]
    if mode == "host":
        return network_settings(net)
    if mode == "container":
        other = store.state(net["container"])
        if other["State"]["Status"] != "running":
            raise InvalidState(f"cannot join the network of container {other['Name'][1:]}: it is not running")
        if net.get("target_mode") != "host" and not os.path.exists(store.networks.netns_path(net["container"])):
            raise InvalidState(f"cannot join the network of container {other['Name'][1:]}: it has no "
                               "network namespace")
        return network_settings(net)
    cid = rec["Id"]
    att = store.networks.attach(cid, rec["Name"].lstrip("/"), net["network"] if mode == "bridge" else None,
                                ports=net["ports"], ip=net.get("ip"), hosts_path=rec["HostsPath"],
                                hostname=rec["Config"]["Hostname"],
                                extra_hosts=rec["HostConfig"].get("ExtraHosts") or ())
    return network_settings(net, att)


def down(store, cid):
    store.networks.detach(cid)


def reconcile(store):
    """Detach what containers that no longer run left (a monitor killed, an engine
    killed mid-start)."""
    if not os.path.isdir(store.networks.run):
        return []

    def alive(cid):
        try:
            return store.state(cid)["State"]["Status"] in ("running", "starting")
        except KetchError:
            return store.being_removed(cid)  # its monitor detaches it (--rm teardown)

    return store.networks.reconcile(alive)
