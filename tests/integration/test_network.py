"""Networking end to end, as root: real containers (`ketch container run` on a busybox image)
on real bridges and veths made by the real CNI plugins, iptables (nf_tables) rules by portmap
and firewall.

Traffic rule: only to loopback and to addresses inside network namespaces these tests create.
Every test runs in a network namespace of its own (`testns`: pytest's thread enters a new one,
with only `lo`, for the test): every ketch command, CNI plugin, bridge, veth, iptables rule,
ip_forward and port forward of the test lives there and goes with it; `-p` is reached on
127.0.0.1 of that namespace; resolv.conf is checked as a file, never queried.

Every test checks, before and after, that nothing of its containers is left in its namespace:
no veth, no host-local lease, no iptables rule naming a test subnet or container, no namespace
mount; every test removes the networks it made; and that nothing appeared in the host's
namespace (its links, iptables rules and ip_forward are as they were)."""

import json
import os
import re
import signal
import socket
import subprocess
import tarfile
import time
import urllib.request

import pytest

from ketch import busybox
from ketch.engine import Engine
from ketch.engine.network import config as C

from conftest import KETCH, wait_for

NET_RE = re.compile(r"10\.89\.|ketch0|ketch-[0-9a-f]{9}|CNI-DN-|CNI-[0-9a-f]{24}")


@pytest.fixture(scope="module")
def rootfs_tar(tmp_path_factory):
    d = tmp_path_factory.mktemp("bbnet")
    root = busybox.make_rootfs(str(d / "rootfs"))
    os.makedirs(os.path.join(root, "www"))
    with open(os.path.join(root, "www", "index.html"), "w") as f:
        f.write("hello from web\n")
    path = str(d / "busybox.tar")
    with tarfile.open(path, "w") as t:
        t.add(root, arcname=".")
    return path


def _links():
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines()}


def _veths():
    out = subprocess.run(["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True).stdout
    return {ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines()}


def _rules():
    """iptables-save lines about ketch's subnets, bridges or per-container chains (no counters)."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return {re.sub(r"\[\d+:\d+\]", "", ln) for ln in out.splitlines() if NET_RE.search(ln)}


def _leases(run):
    d = os.path.join(run, "networks", "ipam")
    out = set()
    for dirpath, _, files in os.walk(d):
        out |= {os.path.join(dirpath, f) for f in files if re.match(r"\d+\.\d+\.\d+\.\d+\Z", f)}
    return out


def _netns_mounts():
    with open("/proc/self/mountinfo") as f:
        return {ln.split()[4] for ln in f if ln.split()[8] == "nsfs"}


class Snapshot:
    def __init__(self, run):
        self.run = run
        self.veths, self.rules, self.mounts = _veths(), _rules(), _netns_mounts()

    def leftovers(self):
        # a bridge's isolation rules belong to the network (they go with `network rm`)
        rules = {r for r in _rules() - self.rules if "CNI-ISOLATION" not in r}
        left = {"veths": _veths() - self.veths, "rules": rules, "leases": _leases(self.run),
                "netns mounts": _netns_mounts() - self.mounts}
        for sub in ("netns", "attach"):
            d = os.path.join(self.run, "networks", sub)
            left[sub] = set(os.listdir(d)) if os.path.isdir(d) else set()
        return {k: v for k, v in left.items() if v}


class K:
    """`ketch container|network ...` on one store."""

    def __init__(self, store, root):
        self.store, self.root = store, root

    def __call__(self, *args, check=True, timeout=60, **kw):
        kw.setdefault("capture_output", True)
        p = subprocess.run([KETCH, "--root", self.root, *args[:2], "--storage-root", self.store, *args[2:]],
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
        if check and p.returncode != 0:
            raise AssertionError(f"ketch {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    def run(self, *args, **kw):
        return self("container", "run", *args, **kw)

    def sh(self, script, *flags, **kw):
        return self.run("--rm", *flags, "bb", "sh", "-c", script, **kw)

    def inspect(self, ref):
        return json.loads(self("container", "inspect", ref).stdout)[0]

    def ip(self, ref, network):
        return self.inspect(ref)["NetworkSettings"]["Networks"][network]["IPAddress"]


@pytest.fixture
def k(testns, tmp_path, runtime_root, rootfs_tar):
    store = str(tmp_path / "store")
    kk = K(store, runtime_root)
    kk("image", "import", rootfs_tar, "bb")
    assert not _link_exists(C.DEFAULT_NETWORK)  # a namespace of the test's own
    snap = Snapshot(runtime_root)
    kk.snapshot = snap
    yield kk
    for cid in kk("container", "ls", "-a", "-q", "--no-trunc").stdout.split():
        kk("container", "rm", "-f", cid, check=False)
    left = snap.leftovers()
    eng = Engine(storage_root=store, runtime_root=runtime_root)
    for n in eng.networks.list():
        if n["Name"] != C.DEFAULT_NETWORK:
            eng.networks.remove(n["Name"])
    subprocess.run(["rm", "-rf", os.path.join(runtime_root, "networks")])
    assert not left, f"left behind: {left}"
    # The default network stays (as Docker's bridge does), with its bridge and isolation
    # rules: they go with the test's namespace.  A user network's go with `network rm`.
    assert {r for r in _rules() - snap.rules if not ("CNI-ISOLATION" in r and C.DEFAULT_NETWORK in r)} == set(), \
        "network rm left rules"


def _link_exists(name):
    """(sysfs shows the host's namespace, the one it was mounted in: ask netlink.)"""
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _web(k, name, *flags):
    """A detached busybox httpd serving /www on port 80."""
    k.run("-d", "--name", name, *flags, "bb", "httpd", "-f", "-p", "80", "-h", "/www")
    pid = k.inspect(name)["State"]["Pid"]

    def listening():
        for t in ("tcp", "tcp6"):  # the container's namespace, seen from the host
            with open(f"/proc/{pid}/net/{t}") as f:
                if any(ln.split()[1].endswith(":0050") and ln.split()[3] == "0A" for ln in f.readlines()[1:]):
                    return True
        return False

    assert wait_for(listening, timeout=10), f"httpd in {name} does not listen"


# ---------------------------------------------------------------- modes and files

def test_default_bridge_address_route_and_docker_files(k):
    r = k.sh("ip -4 -o addr show eth0; ip route; echo ---; cat /etc/hosts; echo ---; cat /etc/resolv.conf; "
             "echo ---; hostname", "--hostname", "box1")
    addr, hosts, resolv, hostname = r.stdout.split("---\n")
    m = re.search(r"inet (10\.89\.0\.\d+)/24", addr)
    assert m, addr
    assert "default via 10.89.0.1 dev eth0" in addr
    assert f"{m.group(1)}\tbox1" in hosts.splitlines() and "127.0.0.1\tlocalhost" in hosts.splitlines()
    with open("/etc/resolv.conf") as f:
        assert resolv == C.resolv_conf(f.read(), "bridge")
    assert hostname.strip() == "box1"


def test_default_subnet_comes_from_the_environment_when_first_made(k):
    env = dict(os.environ, KETCH_DEFAULT_SUBNET="10.89.77.0/24")
    r = k.sh("ip -4 -o addr show eth0; ip route", env=env)
    assert re.search(r"inet 10\.89\.77\.\d+/24", r.stdout) and "default via 10.89.77.1" in r.stdout, r.stdout
    # written once: the store's ketch0 keeps its subnet whatever the environment says later
    r = k.sh("ip -4 -o addr show eth0", env=dict(os.environ, KETCH_DEFAULT_SUBNET="10.89.78.0/24"))
    assert "inet 10.89.77." in r.stdout
    info = json.loads(k("network", "inspect", "bridge").stdout)[0]
    assert info["IPAM"]["Config"][0]["Subnet"] == "10.89.77.0/24"


def test_none_has_only_loopback(k):
    r = k.sh("ip -o link; echo ---; cat /etc/hosts; echo ---; cat /etc/resolv.conf", "--network", "none")
    links, hosts, resolv = r.stdout.split("---\n")
    names = [ln.split(":")[1].strip() for ln in links.splitlines()]
    assert names == ["lo"] and "UP" in links
    assert "nameserver" not in resolv
    assert [ln for ln in hosts.splitlines() if not ln.startswith(("::", "fe", "ff"))][:2] == \
        ["127.0.0.1\tlocalhost", f"127.0.0.1\t{hosts.splitlines()[-1].split()[1]}"]


def test_host_mode_sees_the_hosts_network_and_files(k):
    """The engine's namespace (the test's) is the container's: a link made there shows inside."""
    subprocess.run(["ip", "link", "add", "ktbr0", "type", "bridge"], check=True)
    r = k.sh("ip -o link | cut -d: -f2; echo ---; cat /etc/hosts; echo ---; cat /etc/resolv.conf; echo ---; hostname",
             "--network", "host")
    links, hosts, resolv, hostname = r.stdout.split("---\n")
    assert {ln.strip().split("@")[0] for ln in links.splitlines()} == _links()
    assert "ktbr0" in _links()
    with open("/etc/hosts") as f:
        assert hosts == f.read()
    with open("/etc/resolv.conf") as f:
        assert resolv == f.read()
    assert hostname.strip() == socket.gethostname()


def test_dns_flags_add_host_and_ip(k):
    k("network", "create", "--subnet", "10.89.201.0/24", "tnet-flags")
    r = k.sh("ip -4 -o addr show eth0; echo ---; cat /etc/resolv.conf; echo ---; cat /etc/hosts",
             "--network", "tnet-flags", "--ip", "10.89.201.50", "--dns", "10.89.201.1", "--dns-search", "a.test",
             "--dns-option", "ndots:2", "--add-host", "db:10.89.201.9", "--hostname", "h1")
    addr, resolv, hosts = r.stdout.split("---\n")
    assert "inet 10.89.201.50/24" in addr
    assert [ln for ln in resolv.splitlines() if ln.startswith(("nameserver", "search", "options"))] == \
        ["search a.test", "options ndots:2", "nameserver 10.89.201.1"]
    assert "10.89.201.50\th1" in hosts.splitlines() and "10.89.201.9\tdb" in hosts.splitlines()
    # --ip outside the subnet, or on the default bridge: one line, nothing left
    for flags in (["--network", "tnet-flags", "--ip", "10.89.202.5"], ["--ip", "10.89.0.77"]):
        p = k.run("--rm", *flags, "bb", "true", check=False)
        assert p.returncode != 0 and "--ip" in p.stderr and len(p.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- reachability

def test_containers_on_a_user_network_reach_each_other_by_name(k):
    k("network", "create", "tnet-a")
    _web(k, "web", "--network", "tnet-a")
    web_ip = k.ip("web", "tnet-a")
    r = k.sh("grep -w web /etc/hosts; timeout 5 wget -q -O- http://web/; ping -c 1 -W 3 web >/dev/null && echo pinged",
             "--network", "tnet-a", "--name", "client")
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"{web_ip}\tweb ") and lines[1] == "hello from web" and lines[2] == "pinged"
    # a peer that starts later is added to web's hosts, and removed when it goes
    k.run("-d", "--name", "peer", "--network", "tnet-a", "bb", "sleep", "100")
    peer_ip = k.ip("peer", "tnet-a")
    hosts = k("container", "exec", "web", "cat", "/etc/hosts").stdout
    assert f"{peer_ip}\tpeer " in hosts and "client" not in hosts
    r = k("container", "exec", "peer", "timeout", "5", "wget", "-q", "-O-", "http://web/")
    assert r.stdout == "hello from web\n"
    k("container", "rm", "-f", "peer")
    assert "peer" not in k("container", "exec", "web", "cat", "/etc/hosts").stdout


def test_containers_on_different_networks_cannot_reach_each_other(k):
    k("network", "create", "tnet-b1")
    k("network", "create", "tnet-b2")
    _web(k, "web1", "--network", "tnet-b1")
    ip1 = k.ip("web1", "tnet-b1")
    same = k.sh(f"timeout 5 wget -q -O- http://{ip1}/", "--network", "tnet-b1")
    assert same.stdout == "hello from web\n"
    other = k.sh(f"timeout 3 wget -q -O- http://{ip1}/ && echo reached; grep -c web1 /etc/hosts",
                 "--network", "tnet-b2", check=False)
    assert "reached" not in other.stdout and other.stdout.strip().endswith("0")
    dflt = k.sh(f"timeout 3 wget -q -O- http://{ip1}/ && echo reached", check=False)
    assert "reached" not in dflt.stdout


def test_internal_network_has_no_way_out_but_peers_talk(k):
    k("network", "create", "--internal", "tnet-int")
    _web(k, "iweb", "--network", "tnet-int")
    r = k.sh("ip route; echo ---; timeout 5 wget -q -O- http://iweb/", "--network", "tnet-int")
    routes, body = r.stdout.split("---\n")
    assert "default" not in routes and body == "hello from web\n"
    net = json.loads(k("network", "inspect", "tnet-int").stdout)[0]
    assert net["Internal"] is True


def test_container_mode_shares_the_namespace(k):
    k("network", "create", "tnet-c")
    _web(k, "cweb", "--network", "tnet-c")
    ip = k.ip("cweb", "tnet-c")
    r = k.sh("ip -4 -o addr show eth0; timeout 5 wget -q -O- http://127.0.0.1/; cat /etc/hostname",
             "--network", "container:cweb")
    assert f"inet {ip}/" in r.stdout and "hello from web" in r.stdout
    assert r.stdout.splitlines()[-1] == k.inspect("cweb")["Config"]["Hostname"]
    k("container", "stop", "-t", "0", "cweb")
    p = k.run("--rm", "--network", "container:cweb", "bb", "true", check=False)
    assert p.returncode != 0 and "not running" in p.stderr


def test_publish_reaches_the_container_from_host_loopback(k):
    """portmap DNATs 127.0.0.1:PORT (its OUTPUT chain) to the container and sets
    route_localnet on the bridge alone, so the packet with a loopback source may be
    routed out to the veth; the masquerade mark rewrites the source to the bridge's."""
    port = _free_port()
    _web(k, "pweb", "-p", f"127.0.0.1:{port}:80")
    assert k.inspect("pweb")["NetworkSettings"]["Ports"]["80/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
    body = wait_for(lambda: _get(f"http://127.0.0.1:{port}/"), timeout=10)
    assert body == "hello from web\n"
    assert any(f"--dport {port}" in r for r in _rules())
    k("container", "rm", "-f", "pweb")
    assert not any(f"--dport {port}" in r for r in _rules())
    assert _get(f"http://127.0.0.1:{port}/") is None


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.read().decode()
    except OSError:
        return None


def test_network_verbs(k):
    nid = k("network", "create", "--subnet", "10.89.210.0/24", "--gateway", "10.89.210.254", "tnet-v").stdout.strip()
    ls = k("network", "ls").stdout
    assert "tnet-v" in ls and "ketch0" in ls and "10.89.210.0/24" in ls and nid[:12] in ls
    info = json.loads(k("network", "inspect", "tnet-v").stdout)[0]
    assert info["IPAM"]["Config"] == [{"Subnet": "10.89.210.0/24", "Gateway": "10.89.210.254"}]
    with open(info["ConfigPath"]) as f:
        assert json.load(f)["plugins"][0]["type"] == "bridge"
    for args, msg in ((["network", "create", "tnet-v"], "already exists"),
                      (["network", "create", "--subnet", "10.89.210.128/25", "tnet-w"], "overlaps"),
                      (["network", "create", "host"], "reserved"),
                      (["network", "rm", "ketch0"], "default network")):
        p = k(*args, check=False)
        assert p.returncode != 0 and msg in p.stderr, (args, p.stderr)
    k.run("-d", "--name", "v1", "--network", "tnet-v", "bb", "sleep", "100")
    ip = k.ip("v1", "tnet-v")
    assert info["Id"] == nid
    assert list(json.loads(k("network", "inspect", "tnet-v").stdout)[0]["Containers"].values())[0]["IPv4Address"] \
        == f"{ip}/24"
    p = k("network", "rm", "tnet-v", check=False)
    assert p.returncode != 0 and "active endpoints" in p.stderr
    k("container", "rm", "-f", "v1")
    bridge = info["Options"]["bridge"]
    assert _link_exists(bridge)
    k("network", "create", "tnet-unused")
    k("network", "create", "tnet-kept")
    k("container", "create", "--network", "tnet-kept", "bb", "true")  # configured for it: kept
    pruned = k("network", "prune").stdout.split()
    assert "tnet-unused" in pruned and "tnet-v" in pruned and "tnet-kept" not in pruned
    assert not _link_exists(bridge)
    ls = k("network", "ls").stdout
    assert "tnet-v" not in ls and "tnet-kept" in ls
    k("network", "rm", "tnet-kept")


def test_python_api(tmp_path, runtime_root, rootfs_tar, k):
    eng = Engine(storage_root=k.store, runtime_root=runtime_root)
    eng.networks.create("tnet-py", subnet="10.89.220.0/24")
    cid = eng.containers.run("bb", ["sleep", "100"], detach=True, name="pyweb", network="tnet-py",
                             ip="10.89.220.20", dns=["10.89.220.1"])
    assert eng.networks.check(cid) is True
    r = eng.containers.run("bb", ["sh", "-c", "ping -c1 -W3 pyweb >/dev/null && echo ok; cat /etc/resolv.conf"],
                           remove=True, network="tnet-py")
    assert r.stdout.decode().splitlines()[0] == "ok" and "nameserver" in r.stdout.decode()
    assert eng.containers.inspect(cid)["NetworkSettings"]["Networks"]["tnet-py"]["IPAddress"] == "10.89.220.20"
    eng.containers.remove(cid, force=True)


# ---------------------------------------------------------------- cleanup

def test_stop_and_rm_leave_nothing(k):
    port = _free_port()
    _web(k, "sweb", "-p", f"127.0.0.1:{port}:80")
    assert k.snapshot.leftovers()  # while it runs: a veth, a lease, rules, a namespace
    k("container", "stop", "-t", "1", "sweb")
    assert k.snapshot.leftovers() == {}
    k("container", "start", "sweb")
    assert wait_for(lambda: _get(f"http://127.0.0.1:{port}/")) == "hello from web\n"
    k("container", "rm", "-f", "sweb")
    assert k.snapshot.leftovers() == {}


def test_killed_monitor_is_reconciled_by_the_next_engine(k):
    k("network", "create", "tnet-k")
    _web(k, "kweb", "--network", "tnet-k", "-p", f"127.0.0.1:{_free_port()}:80")
    st = k.inspect("kweb")["State"]
    os.kill(st["MonitorPid"], signal.SIGKILL)
    os.kill(st["Pid"], signal.SIGKILL)  # the container's init, now nobody's child
    wait_for(lambda: not os.path.exists(f"/proc/{st['Pid']}/stat") or
             open(f"/proc/{st['Pid']}/stat").read().split(")")[1].split()[0] == "Z", timeout=30)
    assert k.snapshot.leftovers()  # nobody tore the network down
    # the runtime container is left too: remove it the runtime's way, as `rm` would
    subprocess.run([KETCH, "--root", k.root, "delete", "--force", k.inspect("kweb")["Id"]], capture_output=True)
    k("container", "ls")  # the engine's next start
    assert k.snapshot.leftovers() == {}
    assert k.inspect("kweb")["State"]["Status"] == "exited"


@pytest.mark.parametrize("syscall,when", [("unshare", 1), ("setns", 1), ("wait4", 2), ("wait4", 3)])
def test_engine_killed_mid_start_is_reconciled(k, syscall, when):
    """strace SIGKILLs the processes doing the network setup at their Nth call: the monitor
    before the namespace exists (unshare), with the namespace mounted (setns), and, with
    wait4, the monitor and the bridge plugin in the middle of the bridge's ADD."""
    k("network", "create", "tnet-s")
    cid = k("container", "create", "--name", "sk", "--network", "tnet-s", "-p", f"127.0.0.1:{_free_port()}:80",
            "bb", "sleep", "100").stdout.strip()
    p = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}", "-e",
                        f"inject={syscall}:signal=KILL:when={when}", KETCH, "--root", k.root, "container", "start",
                        "--storage-root", k.store, cid], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0, p.stdout
    left = k.snapshot.leftovers()
    assert "attach" in left
    if syscall == "wait4":  # killed while the plugins were at work
        assert {"veths", "leases", "netns mounts"} & set(left), left
    k("container", "ls")
    assert k.snapshot.leftovers() == {}
    # and the container starts normally afterwards
    k("container", "start", cid)
    assert k.snapshot.leftovers()
    k("container", "rm", "-f", cid)
    assert k.snapshot.leftovers() == {}
