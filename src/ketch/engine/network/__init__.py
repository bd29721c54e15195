"""Docker's networking model on the standard CNI plugins.

Layout::

    <storage root>/networks/<name>.conflist     a network: a CNI conflist (ketch's own
                                                facts under the "ketch" key, which
                                                plugins never see)
    <runtime root>/networks/netns/<id>          the container's network namespace (nsfs bind mount)
    <runtime root>/networks/attach/<id>.json    the attachment: the conflist, runtimeConfig and
                                                plugins ADD ran, and the result, so DEL
                                                gets what ADD returned
    <runtime root>/networks/ipam/<name>/        host-local's leases

The runtime root's directory itself is flocked over changes of attachments
and hosts files; `networks/` goes when the last attachment does, so a
runtime root without running containers stays empty.

Everything under the runtime root is volatile (a tmpfs, as /run): after a
reboot no namespace, veth, lease or rule of the old boot is left, and no
record claims one.

A container is attached when its monitor starts it and detached when it
exits (a stopped container holds no network, as it holds no cgroup).  The
attachment record is written before the namespace is made and after every
plugin's ADD, so whatever was done before a crash can be undone: `detach`
runs DEL, in reverse, for exactly the plugins that ran, with the last
result, then unmounts the namespace.  `reconcile` does that for every
attachment whose container is gone or no longer running.
"""

from ketch import _json as json
import os

from ketch.errors import ConfigError, KetchError
from ketch.engine.network import config as C
from ketch.linux import eagain

__all__ = ["Networks", "NetworkNotFound", "C"]


class NetworkNotFound(KetchError):
    def __init__(self, name):
        super().__init__(f"network {name} not found")


class Networks:
    """Networks under `storage_root`, attachments under `runtime_root`."""

    def __init__(self, storage_root, runtime_root, default_subnet=None, cni_path=None):
        self.storage_root = os.path.abspath(storage_root)
        self.dir = os.path.join(storage_root, "networks")
        self.run = os.path.join(runtime_root, "networks")
        self.default_subnet = default_subnet or os.environ.get("KETCH_DEFAULT_SUBNET") or C.DEFAULT_SUBNET
        self.cni_path = cni_path

    # ------------------------------------------------------------ plumbing

    def _lock(self):
        return _DirLock(os.path.dirname(self.run))

    def _gc(self):
        """Remove networks/ under the runtime root when nothing is attached (lock held)."""
        from ketch.engine.util import remove_tree
        for sub in ("attach", "netns"):
            try:
                if os.listdir(os.path.join(self.run, sub)):
                    return
            except FileNotFoundError:
                pass
        remove_tree(self.run)

    def _conf_path(self, name):
        return os.path.join(self.dir, name + ".conflist")

    def netns_path(self, cid):
        return os.path.join(self.run, "netns", cid)

    def _attach_path(self, cid):
        return os.path.join(self.run, "attach", cid + ".json")

    def _write(self, path, obj):
        from ketch.engine.util import atomic_write
        atomic_write(path, json.dumps(obj, indent=1), 0o600)

    # ------------------------------------------------------------ networks

    def _read(self, name):
        try:
            with open(self._conf_path(name)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise KetchError(f"network {name}: corrupt {self._conf_path(name)}: {e}") from None

    def _default(self):
        conf = self._read(C.DEFAULT_NETWORK)
        if conf is None:
            conf = self._new(C.DEFAULT_NETWORK, self.default_subnet, None, False, {}, exclusive=False)
        return conf

    def _new(self, name, subnet, gateway, internal, labels, exclusive=True):
        import hashlib
        created = _now()
        net_id = hashlib.sha256(f"{name}\0{created}\0{os.urandom(8).hex()}".encode()).hexdigest()
        conf = C.make_conflist(name, net_id, subnet, gateway, internal)
        conf["ketch"] = {"id": net_id, "created": created, "internal": bool(internal), "labels": dict(labels or {})}
        os.makedirs(self.dir, 0o700, exist_ok=True)
        data = json.dumps(conf, indent=1).encode()
        path = self._conf_path(name)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            # link: an atomic "create if absent", so two creates of one name cannot both win
            os.link(tmp, path)
        except FileExistsError:
            if exclusive:
                raise KetchError(f"network with name {name} already exists") from None
            return self._read(name)
        finally:
            os.unlink(tmp)
        return conf

    def get(self, ref):
        """The conflist of a network named by name, an alias of the default or an id prefix."""
        if ref in C.BRIDGE_ALIASES or ref == C.DEFAULT_NETWORK:
            return self._default()
        conf = self._read(ref) if C.NAME_RE.match(ref or "") else None
        if conf is not None:
            return conf
        hits = [c for c in self._all() if c["ketch"]["id"].startswith(ref or "-")]
        if len(hits) == 1:
            return hits[0]
        raise NetworkNotFound(ref)

    def _all(self):
        out = []
        try:
            names = sorted(n[:-9] for n in os.listdir(self.dir) if n.endswith(".conflist"))
        except FileNotFoundError:
            names = []
        for n in names:
            c = self._read(n)
            if c is not None and "ketch" in c:
                out.append(c)
        return out

    def create(self, name, subnet=None, gateway=None, internal=False, labels=None):
        """A new bridge network; returns its id.  Without `subnet`, the first free 10.89.N.0/24."""
        C.valid_network_name(name)
        if name == C.DEFAULT_NETWORK:
            raise ConfigError(f"network name {name!r} is reserved")
        existing = self._all() + [self._default()]
        if subnet is None:
            if gateway:
                raise ConfigError("--gateway needs --subnet")
            used = {C.conflist_facts(c)[0] for c in existing}
            fmt, rng = C.AUTO_SUBNETS
            subnet = next((fmt % i for i in rng if fmt % i not in used), None)
            if subnet is None:
                raise KetchError("no free subnet left in 10.89.0.0/16: pass --subnet")
        import ipaddress
        subnet, gateway = C.subnet_and_gateway(subnet, gateway)
        mine = ipaddress.ip_network(subnet)
        for c in existing:
            s = C.conflist_facts(c)[0]
            if s and ipaddress.ip_network(s).overlaps(mine) and c["name"] != name:
                raise KetchError(f"subnet {subnet} overlaps with network {c['name']} ({s})")
        return self._new(name, subnet, gateway, internal, labels)["ketch"]["id"]

    def inspect(self, ref):
        """Docker's network inspect shape."""
        conf = self.get(ref)
        subnet, gateway, internal, bridge = C.conflist_facts(conf)
        k = conf.get("ketch") or {}
        containers = {}
        for a in self._mine():
            if a.get("network") == conf["name"] and a.get("ip"):
                containers[a["id"]] = {"Name": a.get("name", ""), "IPv4Address": f"{a['ip']}/{a.get('prefix', '')}",
                                       "MacAddress": a.get("mac", ""), "EndpointID": a["id"][:12]}
        return {"Name": conf["name"], "Id": k.get("id", ""), "Created": k.get("created", ""), "Driver": "bridge",
                "Scope": "local", "Internal": internal,
                "IPAM": {"Driver": "host-local", "Config": [{"Subnet": subnet, "Gateway": gateway}]},
                "Options": {"bridge": bridge}, "Labels": k.get("labels", {}), "Containers": containers,
                "ConfigPath": self._conf_path(conf["name"])}

    def list(self):
        self._default()
        return [self.inspect(c["name"]) for c in self._all()]

    def remove(self, ref):
        """Remove a user network with no running container on it, and its bridge."""
        conf = self.get(ref)
        name = conf["name"]
        if name == C.DEFAULT_NETWORK:
            raise KetchError(f"{name} is the default network and cannot be removed")
        with self._lock():
            users = [a["id"][:12] for a in self._mine() if a.get("network") == name]
            if users:
                raise KetchError(f"network {name} has active endpoints (containers {', '.join(users)})")
            os.unlink(self._conf_path(name))
            self._drop_network_state(conf)
        return name

    def _drop_network_state(self, conf):
        from ketch.engine.util import remove_tree
        import subprocess
        remove_tree(os.path.join(self.run, "ipam", conf["name"]))
        bridge = C.conflist_facts(conf)[3]
        if bridge:
            # No plugin removes a bridge (DEL leaves it for the next container);
            # the network going is the time.
            eagain.retry(subprocess.run, ["ip", "link", "delete", bridge, "type", "bridge"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            iptables_drop_isolation(bridge)

    def prune(self, in_use=()):
        """Remove user networks no container uses (`in_use`: names containers are configured for),
        after reconciling leftovers.  Returns the names removed."""
        out = []
        for c in self._all():
            if c["name"] == C.DEFAULT_NETWORK or c["name"] in in_use:
                continue
            try:
                out.append(self.remove(c["name"]))
            except KetchError:
                continue
        return out

    # ------------------------------------------------------------ attachments

    def _attachments(self):
        d = os.path.join(self.run, "attach")
        out = []
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return out
        for n in names:
            if not n.endswith(".json") or n.startswith("."):
                continue
            try:
                with open(os.path.join(d, n)) as f:
                    out.append(json.load(f))
            except (OSError, ValueError):
                out.append({"id": n[:-5], "broken": True})
        return out

    def _mine(self):
        return [a for a in self._attachments() if a.get("store", self.storage_root) == self.storage_root]

    def attachment(self, cid):
        try:
            with open(self._attach_path(cid)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def attach(self, cid, name, network, ports=(), ip=None, hosts_path=None, hostname=None, extra_hosts=()):
        """Make the container's namespace and run ADD of the network's plugins in it.
        `network`: a network name for bridge mode, None for --network none (lo only).
        Returns the attachment record (ip, gateway, prefix, mac, netns)."""
        conf = None
        runtime = {}
        if network is not None:
            conf = self.get(network)
            subnet, gateway, internal, _ = C.conflist_facts(conf)
            conf = {k: v for k, v in conf.items() if k != "ketch"}
            if ports:
                if internal:
                    ports = ()  # Docker publishes nothing from an internal network
                else:
                    runtime["portMappings"] = list(ports)
            if ip:
                runtime["ips"] = [C.parse_ip(ip, subnet)]
        else:
            conf = {"cniVersion": C.CNI_VERSION, "name": "none", "plugins": []}
        conf["plugins"] = [{"type": "loopback"}] + conf["plugins"]
        path = self.netns_path(cid)
        rec = {"id": cid, "store": self.storage_root, "name": name, "network": network, "netns": path, "ifname": C.IFNAME, "conflist": conf,
               "runtimeConfig": runtime, "done": [], "result": None, "hosts": hosts_path,
               "hostname": hostname, "created": _now()}
        if self.attachment(cid) is not None:
            self.detach(cid)
        with self._lock():
            for d in ("netns", "attach", "ipam"):
                os.makedirs(os.path.join(self.run, d), 0o700, exist_ok=True)
            self._write(self._attach_path(cid), rec)  # the intent first: a crash from here on is undone
        try:
            from ketch.engine.network import cni, netns
            netns.create(path)
            prev = None
            ipam_dir = os.path.join(self.run, "ipam")
            for i, plugin in enumerate(conf["plugins"]):
                if plugin["type"] == "loopback":
                    continue  # netns.create brought lo up
                if plugin["type"] == "portmap" and not runtime.get("portMappings"):
                    continue  # nothing to publish: spare the iptables work (and its DEL)
                pc = C.plugin_config(conf, plugin, runtime, prev, ipam_dir)
                rec["done"].append(i)
                self._write(self._attach_path(cid), rec)
                out = cni.invoke("ADD", pc, cid, path, C.IFNAME, self.cni_path)
                if out is not None and i > 0:
                    prev = out
                    rec["result"] = out
                self._write(self._attach_path(cid), rec)
            rec.update(_summary(prev, C.IFNAME))
            if network is not None:
                rec["gateway"] = rec.get("gateway") or C.conflist_facts(conf)[1]
            self._write(self._attach_path(cid), rec)
            if hosts_path and rec.get("ip"):
                with self._lock():
                    self._hosts_up(rec, extra_hosts)
        except BaseException:
            try:
                self.detach(cid)
            except BaseException:  # noqa: BLE001 - the first error is the one to report
                pass
            raise
        return rec

    def check(self, cid):
        """CHECK the attachment with the result ADD returned (plugins in order)."""
        from ketch.engine.network import cni
        rec = self.attachment(cid)
        if rec is None:
            raise KetchError(f"container {cid[:12]} has no network attachment")
        conf = rec["conflist"]
        for i in rec["done"]:
            plugin = conf["plugins"][i]
            if plugin["type"] == "loopback":
                continue
            if plugin["type"] == "portmap" and not any(":" in (ip.get("address") or "")
                                                       for ip in (rec["result"] or {}).get("ips", ())):
                # Debian's portmap 1.1.1 CHECKs an IPv6 chain it never makes for an
                # IPv4-only container, and so always fails.
                continue
            pc = C.plugin_config(conf, plugin, rec["runtimeConfig"], rec["result"], os.path.join(self.run, "ipam"))
            cni.invoke("CHECK", pc, cid, rec["netns"], rec["ifname"], self.cni_path)
        return True

    def detach(self, cid):
        """DEL, in reverse, of every plugin ADD ran (with the cached result), then the
        namespace and the record.  Idempotent; the first DEL error is raised after
        the rest is undone."""
        from ketch.engine.network import cni, netns
        path = self._attach_path(cid)
        with self._lock():
            rec = self.attachment(cid)
            if rec is None:
                if os.path.lexists(self.netns_path(cid)):
                    netns.remove(self.netns_path(cid))
                    self._gc()
                return False
            first = None
            conf = rec.get("conflist") or {"plugins": []}
            ns = rec.get("netns") or self.netns_path(cid)
            if not os.path.exists(ns):
                ns = ""  # the spec's way of saying the namespace is gone: plugins clean up the host side
            for i in reversed(rec.get("done") or []):
                plugin = conf["plugins"][i]
                if plugin["type"] == "loopback":
                    continue
                pc = C.plugin_config(conf, plugin, rec.get("runtimeConfig"), rec.get("result"),
                                     os.path.join(self.run, "ipam"))
                for attempt in (1, 2):
                    try:
                        cni.invoke("DEL", pc, cid, ns, rec.get("ifname") or C.IFNAME, self.cni_path)
                        break
                    except KetchError as e:
                        # DEL must be idempotent, and a second one finishes what a first
                        # stopped halfway: bridge 1.1.1's DEL after an ADD killed midway
                        # deletes the veth and the lease, then fails on the masquerade
                        # chain ADD never made; the next DEL finds nothing left to do.
                        if attempt == 2:
                            first = first or e
            if rec.get("ip") and rec.get("hosts"):
                self._hosts_down(rec)
            netns.remove(rec.get("netns") or self.netns_path(cid))
            if first is not None:
                # keep the record: the next reconcile tries the DELs again
                rec["error"] = str(first)
                self._write(path, rec)
                raise first
            os.unlink(path)
            self._gc()
        return True

    def reconcile(self, alive):
        """Detach every attachment whose container `alive(cid)` says is not running, and
        remove namespace files no attachment claims.  Returns the ids cleaned."""
        from ketch.engine.network import netns
        out = []
        for a in self._attachments():
            cid = a["id"]
            if a.get("store", self.storage_root) != self.storage_root and os.path.isdir(a["store"]):
                continue  # another engine's (one runtime root, several storage roots)
            if alive(cid):
                continue
            try:
                self.detach(cid)
            except KetchError:
                pass
            out.append(cid)
        d = os.path.join(self.run, "netns")
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            names = []
        for n in names:
            if not os.path.exists(self._attach_path(n)) and not alive(n):
                with self._lock():
                    if not os.path.exists(self._attach_path(n)):
                        netns.remove(os.path.join(d, n))
                        self._gc()
                out.append(n)
        return out

    # ------------------------------------------------------------ /etc/hosts of peers

    def _peers(self, rec):
        if rec.get("network") in (None, C.DEFAULT_NETWORK):
            return []  # Docker's default bridge has no name resolution between containers
        return [a for a in self._mine() if a.get("network") == rec["network"] and a["id"] != rec["id"]
                and a.get("ip") and a.get("hosts")]

    def _hosts_up(self, rec, extra_hosts):
        """The container's own line and its peers' in its hosts file; its line in theirs."""
        mine = C.peer_line(rec["ip"], rec["name"], rec["id"])
        own = [C.hosts_file("bridge", rec.get("hostname") or rec["id"][:12], rec["ip"], extra_hosts,
                            gateway=rec.get("gateway"))]
        peers = self._peers(rec)
        own += [C.peer_line(p["ip"], p["name"], p["id"]) for p in peers]
        _rewrite(rec["hosts"], lambda text: "".join(own))
        for p in peers:
            _rewrite(p["hosts"], lambda text: C.edit_hosts(text, add=[mine]))

    def _hosts_down(self, rec):
        mine = C.peer_line(rec["ip"], rec["name"], rec["id"])
        for p in self._peers(rec):
            _rewrite(p["hosts"], lambda text: C.edit_hosts(text, remove=[mine]))


class _DirLock:
    """An exclusive flock on a directory, held for a `with` block."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        import fcntl
        os.makedirs(self.path, 0o711, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def _rewrite(path, fn):
    """Change a bind-mounted file in place: a rename would leave the container
    looking at the old inode."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    with os.fdopen(fd, "r+") as f:
        new = fn(f.read(1 << 20))
        f.seek(0)
        f.write(new)
        f.truncate()


def _summary(result, ifname):
    """ip, prefix, gateway, mac of the container's interface in a CNI result."""
    out = {}
    if not result:
        return out
    ifaces = result.get("interfaces") or []
    for ipc in result.get("ips") or []:
        idx = ipc.get("interface")
        if idx is not None and idx < len(ifaces) and ifaces[idx].get("name") != ifname:
            continue
        addr, _, prefix = ipc.get("address", "").partition("/")
        if ":" in addr:
            continue
        out.update(ip=addr, prefix=int(prefix or 32), gateway=ipc.get("gateway"))
        if idx is not None and idx < len(ifaces):
            out["mac"] = ifaces[idx].get("mac", "")
        break
    return out


def iptables_drop_isolation(bridge):
    """The firewall plugin's same-bridge ingress policy leaves one rule per bridge in
    CNI-ISOLATION-STAGE-1/2 (it cannot know the last container of a bridge went);
    remove those of a bridge that is gone."""
    import subprocess
    note = ["-m", "comment", "--comment", "CNI firewall plugin rules (ingressPolicy: same-bridge)"]
    for chain, rule in (("CNI-ISOLATION-STAGE-1", ["-i", bridge, "!", "-o", bridge] + note +
                         ["-j", "CNI-ISOLATION-STAGE-2"]),
                        ("CNI-ISOLATION-STAGE-2", ["-o", bridge] + note + ["-j", "DROP"])):
        for _ in range(4):
            p = eagain.retry(subprocess.run, ["iptables", "-w", "-t", "filter", "-D", chain] + rule,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if p.returncode != 0:
                break


def _now():
    from ketch.log import now_rfc3339
    return now_rfc3339()


