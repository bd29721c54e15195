"""Networks of the rootless engine: user-mode networking with slirp4netns or pasta.

An unprivileged user can neither make veth pairs nor bridges, so a rootless
container gets a network namespace of its own (made by the runtime, owned by
the container's user namespace) and a user-mode network stack outside it:
``slirp4netns`` (Debian slirp4netns) or ``pasta`` (Debian passt) joins the
container's namespaces through its init's pid and puts a tap device there
(10.0.2.100/24, gateway 10.0.2.2).  ``-p [IP:]HOSTPORT:PORT`` is a listening
socket of that process on the host.

    --network slirp4netns | pasta   (default: the first one installed)
    --network none                  a namespace with only lo
    --network host                  the host's namespace

What the container may reach is kept to nothing but its published ports:
outbound connections are bound to 127.0.0.1 on the host side (so a packet
to any other address has no route and is never sent), the host's loopback
is refused (slirp4netns --disable-host-loopback, pasta --no-map-gw), and no
DNS is forwarded to the host's resolvers (slirp4netns --disable-dns; pasta
without --dns-forward); /etc/resolv.conf has no nameserver, as with none.

The tool lives exactly as long as the container's monitor: slirp4netns
exits when the pipe the monitor holds closes (--exit-fd), pasta is killed by
the monitor and by the kernel with it (PR_SET_PDEATHSIG).
"""

import os

from ketch.errors import ConfigError, KetchError
from ketch.linux import eagain

TOOLS = ("slirp4netns", "pasta")
CIDR, GUEST, GATEWAY = "10.0.2.0/24", "10.0.2.100", "10.0.2.2"


def which(tool):
    import shutil
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/bin:/usr/sbin:/bin:/sbin")


def default_tool():
    for t in TOOLS:
        if which(t):
            return t
    return None


def prepare(store, o, cid):
    """plan.prepare for the rootless engine: the same record, with "usernet" the tool (None:
    none or host)."""
    from ketch.engine.network import config as C
    text = o.get("network") or ""
    if text in ("", "default", "bridge"):
        tool = default_tool()
        if tool is None:
            raise ConfigError("rootless networking needs slirp4netns or pasta: install Debian's slirp4netns "
                              "or passt package, or use --network none")
        mode = "none"
    elif text in TOOLS:
        if not which(text):
            raise ConfigError(f"--network {text}: {text} is not installed (Debian package "
                              f"{'passt' if text == 'pasta' else text})")
        tool, mode = text, "none"
    elif text in ("none", "host"):
        tool, mode = None, text
    else:
        raise ConfigError(f"--network {text}: a rootless container has slirp4netns, pasta, none or host "
                          "(bridge networks need root)")
    if o.get("ip"):
        raise ConfigError("--ip needs a bridge network: not available rootless")
    ports = C.parse_publish_all(o.get("publish") or ())
    if ports and tool is None:
        raise ConfigError(f"-p publishes ports through slirp4netns or pasta; --network {text} has none")
    dns = [C.parse_dns(d) for d in o.get("dns") or ()]
    for h in o.get("add_hosts") or ():
        C.parse_add_host(h)
    return {"mode": mode, "network": None, "ports": ports, "ip": None, "dns": dns,
            "dns_search": list(o.get("dns_search") or ()), "dns_options": list(o.get("dns_options") or ()),
            "hostname": None, "container": None, "usernet": tool}


def apply(config, net):
    """The bundle: a network namespace of the container's own (the runtime makes it in the
    container's user namespace), or the host's."""
    linux = config["linux"]
    nss = [n for n in linux["namespaces"] if n["type"] != "network"]
    if net["mode"] != "host":
        nss.append({"type": "network"})
    else:
        # sysfs may be mounted only by the owner of the network namespace: bind the host's.
        for m in config["mounts"]:
            if m["destination"] == "/sys" and m["type"] == "sysfs":
                m.update(type="none", source="/sys", options=["rbind", "nosuid", "noexec", "nodev", "ro"])
    linux["namespaces"] = nss


def settings(out, net):
    """Docker's NetworkSettings `out` (plan.network_settings) with the tool's addresses."""
    if net.get("usernet"):
        out.update(IPAddress=GUEST, Gateway=GATEWAY, Networks={net["usernet"]: {
            "IPAddress": GUEST, "IPPrefixLen": 24, "Gateway": GATEWAY, "MacAddress": "", "NetworkID": ""}})
    return out


class Attachment:
    """The running tool of one container; close() (or the monitor's exit) stops it."""

    def __init__(self, proc, exit_w=-1):
        self.proc, self.exit_w = proc, exit_w

    def close(self):
        if self.exit_w >= 0:
            os.close(self.exit_w)
            self.exit_w = -1
        if self.proc is not None:
            try:
                self.proc.wait(2)
            except Exception:  # noqa: BLE001 - TimeoutExpired: it did not take the hint
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def start(net, pid, run_dir):
    """Attach the container whose init is `pid` (created, not yet started); None without a tool."""
    tool = net.get("usernet")
    if not tool:
        return None
    if tool == "slirp4netns":
        return _slirp4netns(net, pid, run_dir)
    return _pasta(net, pid, run_dir)


def _slirp4netns(net, pid, run_dir):
    import json
    import socket
    import subprocess
    os.makedirs(run_dir, 0o700, exist_ok=True)
    api = os.path.join(run_dir, f"slirp-{pid}.sock")
    try:
        os.unlink(api)
    except FileNotFoundError:
        pass
    exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    argv = [which("slirp4netns"), "--configure", "--mtu=65520", "--disable-host-loopback", "--disable-dns",
            "--outbound-addr=127.0.0.1", f"--cidr={CIDR}", f"--exit-fd={exit_r}", f"--ready-fd={ready_w}",
            f"--api-socket={api}", f"--userns-path=/proc/{pid}/ns/user", str(pid), "tap0"]
    try:
        proc = eagain.retry(subprocess.Popen, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, pass_fds=(exit_r, ready_w), start_new_session=True)
    except OSError as e:
        os.close(exit_w)
        raise KetchError(f"slirp4netns: {e.strerror}") from None
    finally:
        os.close(exit_r)
        os.close(ready_w)
    att = Attachment(proc, exit_w)
    try:
        with os.fdopen(ready_r, "rb") as f:
            ok = f.read(1) == b"1"
        if not ok:
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise KetchError(f"slirp4netns did not configure the container's network: "
                             f"{err[-1] if err else 'exited ' + str(proc.wait())}")
        proc.stderr.close()
        for m in net["ports"]:
            req = {"execute": "add_hostfwd", "arguments": {
                "proto": m["protocol"], "host_addr": m.get("hostIP") or "0.0.0.0",
                "host_port": m["hostPort"], "guest_addr": GUEST, "guest_port": m["containerPort"]}}
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
                s.connect(api)
                s.sendall(json.dumps(req).encode())
                s.shutdown(socket.SHUT_WR)
                reply = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
            try:
                r = json.loads(reply)
            except ValueError:
                r = {"error": {"desc": reply.decode(errors="replace") or "no reply"}}
            if "error" in r:
                raise KetchError(f"-p {m.get('hostIP') or '0.0.0.0'}:{m['hostPort']}:{m['containerPort']}/"
                                 f"{m['protocol']}: slirp4netns: {r['error'].get('desc', r['error'])}")
    except BaseException:
        att.close()
        raise
    finally:
        try:
            os.unlink(api)  # every forward is set: nobody else gets to add one
        except FileNotFoundError:
            pass
    return att


def _pasta(net, pid, run_dir):
    import subprocess
    import time
    argv = [which("pasta"), "--config-net", "--foreground", "--quiet", "--no-map-gw", "--no-dhcpv6",
            "--no-ndp", "--no-ra", "-a", GUEST, "-n", "24", "-g", GATEWAY, "--outbound", "127.0.0.1",
            "-T", "none", "-U", "none"]
    tcp = [m for m in net["ports"] if m["protocol"] == "tcp"]
    udp = [m for m in net["ports"] if m["protocol"] == "udp"]
    for flag, ms in (("-t", tcp), ("-u", udp)):
        if not ms:
            argv += [flag, "none"]
        for m in ms:
            ip = m.get("hostIP")
            argv += [flag, (f"{ip}/" if ip else "") + f"{m['hostPort']}:{m['containerPort']}"]
    os.makedirs(run_dir, 0o700, exist_ok=True)
    pidfile = os.path.join(run_dir, f"pasta-{pid}.pid")
    try:
        os.unlink(pidfile)
    except FileNotFoundError:
        pass
    argv += ["--netns", f"/proc/{pid}/ns/net", "--userns", f"/proc/{pid}/ns/user", "--pid", pidfile]
    # pasta does not quit when the container does (it holds the namespace): it stays our
    # child (--foreground), and the kernel kills it if the monitor dies (setpriv --pdeathsig).
    setpriv = which("setpriv")
    if setpriv:
        argv = [setpriv, "--pdeathsig", "KILL", "--"] + argv
    try:
        proc = eagain.retry(subprocess.Popen, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    except OSError as e:
        raise KetchError(f"pasta: {e.strerror}") from None
    try:
        # It writes its pid file once the namespace is configured and the ports are bound.
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with open(pidfile) as f:
                    if f.read().strip():
                        break
            except FileNotFoundError:
                pass
            time.sleep(0.005)
        else:
            err = b"" if proc.poll() is None else proc.stderr.read()
            err = [x for x in err.decode(errors="replace").splitlines() if "syslog" not in x]
            raise KetchError(f"pasta did not configure the container's network: "
                             f"{err[-1] if err else 'no answer in 10 s'}")
        proc.stderr.close()
    except BaseException:
        _stop(proc)
        raise
    finally:
        try:
            os.unlink(pidfile)
        except FileNotFoundError:
            pass
    att = Attachment(proc)
    att.close = lambda: _stop(proc)
    import atexit
    atexit.register(att.close)  # the monitor's exit; PR_SET_PDEATHSIG covers its death
    return att


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(2)
        except Exception:  # noqa: BLE001
            proc.kill()
            proc.wait()
