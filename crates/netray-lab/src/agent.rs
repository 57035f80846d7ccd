//! The lab's pod workload and probe client, in one small program (`nrl-agent`, or
//! `netray lab agent`): a TCP and UDP server answering each request with its own name, and a
//! client that sends one request and waits, bounded in time, for the answer.
//!
//! Protocol: the client sends one line `<token>`; the server answers `<name> <token>` (TCP: one
//! line then close; UDP: one datagram). A probe succeeds only when the answer carries the token,
//! so a handshake alone (or a stray packet) never counts as reachability. TCP with data sizes:
//! the line is `<token> <REQ> <RESP>` followed by REQ bytes; the server reads them all, then
//! answers its line followed by RESP bytes, which the client must read in full (full-size
//! segments both ways, not only the handshake).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// Usage of the agent program.
pub const USAGE: &str = "usage:\n  serve --name NAME [--tcp PORT]... [--udp PORT]...\n  probe tcp|udp IP:PORT [--timeout-ms MS] [--bind IP] [--sport PORT (udp)] [--token T] [--request-bytes N] [--response-bytes N] (tcp)";

/// Largest request or response body a probe asks for.
const MAX_BODY: usize = 64 << 20;

/// Run the agent with its arguments (without the program name); returns the exit code:
/// 0 success, 1 probe failed, 2 usage error.
pub fn main_with_args(args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        Some("serve") => match serve_args(&args[1..]) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("nrl-agent serve: {e}");
                2
            }
        },
        Some("probe") => match probe_args(&args[1..]) {
            Ok(Ok(answer)) => {
                println!("{answer}");
                0
            }
            Ok(Err(e)) => {
                eprintln!("nrl-agent probe: {e}");
                1
            }
            Err(e) => {
                eprintln!("nrl-agent probe: {e}\n{USAGE}");
                2
            }
        },
        _ => {
            eprintln!("{USAGE}");
            2
        }
    }
}

fn serve_args(args: &[String]) -> Result<(), String> {
    let mut name = None;
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--name" => name = Some(v.clone()),
            "--tcp" => tcp.push(v.parse::<u16>().map_err(|e| format!("--tcp {v}: {e}"))?),
            "--udp" => udp.push(v.parse::<u16>().map_err(|e| format!("--udp {v}: {e}"))?),
            _ => return Err(format!("unknown option {a}")),
        }
    }
    let name = name.ok_or("--name is required")?;
    serve(&name, &tcp, &udp)
}

/// Serve forever on every TCP and UDP port given (all addresses), answering with `name`.
pub fn serve(name: &str, tcp: &[u16], udp: &[u16]) -> Result<(), String> {
    let mut threads = Vec::new();
    for &port in tcp {
        let l = TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("tcp {port}: {e}"))?;
        let name = name.to_string();
        threads.push(std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || {
                    let _ = answer_tcp(&name, conn);
                });
            }
        }));
    }
    for &port in udp {
        let s = UdpSocket::bind(("0.0.0.0", port)).map_err(|e| format!("udp {port}: {e}"))?;
        let name = name.to_string();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            loop {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    let token = String::from_utf8_lossy(&buf[..n]).trim().to_string();
                    let _ = s.send_to(format!("{name} {token}\n").as_bytes(), from);
                }
            }
        }));
    }
    // Tell the starter we are listening (it waits for this line).
    println!("ready");
    let _ = std::io::stdout().flush();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn answer_tcp(name: &str, conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(&conn);
    let mut line = String::new();
    (&mut reader).take(4096).read_line(&mut line)?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let sizes = match words.as_slice() {
        [_, req, resp] => req.parse::<usize>().ok().zip(resp.parse::<usize>().ok()),
        _ => None,
    };
    let Some((req, resp)) = sizes.filter(|(a, b)| *a <= MAX_BODY && *b <= MAX_BODY) else {
        return (&conn).write_all(format!("{name} {}\n", line.trim()).as_bytes());
    };
    std::io::copy(&mut (&mut reader).take(req as u64), &mut std::io::sink())?;
    let mut out = format!("{name} {}\n", words[0]).into_bytes();
    out.resize(out.len() + resp, b'y');
    (&conn).write_all(&out)
}

fn probe_args(args: &[String]) -> Result<Result<String, String>, String> {
    let proto = args.first().ok_or("missing protocol")?.clone();
    let target: SocketAddr = args
        .get(1)
        .ok_or("missing IP:PORT")?
        .parse()
        .map_err(|e| format!("IP:PORT: {e}"))?;
    let mut timeout = Duration::from_millis(1500);
    let mut bind = None;
    let mut sport = 0;
    let mut token = format!("t{}", std::process::id());
    let mut body = None::<(usize, usize)>;
    let size = |v: &str, a: &str| -> Result<usize, String> {
        let n = v.parse::<usize>().map_err(|e| format!("{a}: {e}"))?;
        if n > MAX_BODY {
            return Err(format!("{a}: at most {MAX_BODY}"));
        }
        Ok(n)
    };
    let mut it = args[2..].iter();
    while let Some(a) = it.next() {
        let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--timeout-ms" => {
                timeout = Duration::from_millis(v.parse().map_err(|e| format!("{a}: {e}"))?)
            }
            "--bind" => bind = Some(v.parse::<IpAddr>().map_err(|e| format!("{a}: {e}"))?),
            "--sport" if proto == "udp" => {
                sport = v.parse::<u16>().map_err(|e| format!("{a}: {e}"))?
            }
            "--token" => token = v.clone(),
            "--request-bytes" if proto == "tcp" => body.get_or_insert((0, 0)).0 = size(v, a)?,
            "--response-bytes" if proto == "tcp" => body.get_or_insert((0, 0)).1 = size(v, a)?,
            _ => return Err(format!("unknown option {a}")),
        }
    }
    Ok(match proto.as_str() {
        "tcp" => match body {
            None => probe_tcp(target, bind, &token, timeout),
            Some((req, resp)) => probe_tcp_data(target, bind, &token, req, resp, timeout),
        },
        "udp" => probe_udp(target, bind, sport, &token, timeout),
        p => return Err(format!("unknown protocol {p}")),
    })
}

/// Check an answer line: `<name> <token>` → `name`.
fn check_answer(answer: &str, token: &str) -> Result<String, String> {
    let answer = answer.trim();
    match answer.rsplit_once(' ') {
        Some((name, t)) if t == token && !name.is_empty() => Ok(name.to_string()),
        _ => Err(format!("unexpected answer {answer:?}")),
    }
}

/// One TCP request/response to `target`, bounded by `timeout` overall; returns the answering
/// server's name.
pub fn probe_tcp(
    target: SocketAddr,
    bind: Option<IpAddr>,
    token: &str,
    timeout: Duration,
) -> Result<String, String> {
    let start = Instant::now();
    let stream = match bind {
        None => {
            TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("connect: {e}"))?
        }
        Some(src) => connect_from(src, target, timeout)?,
    };
    let left = timeout
        .checked_sub(start.elapsed())
        .filter(|d| !d.is_zero())
        .ok_or("timed out")?;
    stream
        .set_read_timeout(Some(left))
        .and_then(|_| stream.set_write_timeout(Some(left)))
        .map_err(|e| e.to_string())?;
    (&stream)
        .write_all(format!("{token}\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    BufReader::new((&stream).take(4096))
        .read_line(&mut line)
        .map_err(|e| format!("receive: {e}"))?;
    check_answer(&line, token)
}

/// One TCP request of `req` bytes answered by `resp` bytes, bounded by `timeout` overall;
/// returns the answering server's name once every byte has arrived (the error says how many
/// did, and whether the connection was established at all).
pub fn probe_tcp_data(
    target: SocketAddr,
    bind: Option<IpAddr>,
    token: &str,
    req: usize,
    resp: usize,
    timeout: Duration,
) -> Result<String, String> {
    let start = Instant::now();
    let stream = match bind {
        None => {
            TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("connect: {e}"))?
        }
        Some(src) => connect_from(src, target, timeout)?,
    };
    let left = || {
        timeout
            .checked_sub(start.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "established, then timed out".to_string())
    };
    stream
        .set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    let mut msg = format!("{token} {req} {resp}\n").into_bytes();
    msg.resize(msg.len() + req, b'x');
    (&stream)
        .write_all(&msg)
        .map_err(|e| format!("established, then send of {req} bytes: {e}"))?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    stream
        .set_read_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    (&mut reader)
        .take(4096)
        .read_line(&mut line)
        .map_err(|e| format!("established, then no answer: {e}"))?;
    let name = check_answer(&line, token)?;
    let mut got = 0usize;
    let mut buf = [0u8; 16384];
    while got < resp {
        stream
            .set_read_timeout(Some(
                left().map_err(|e| format!("{e} after {got} of {resp} bytes"))?,
            ))
            .map_err(|e| e.to_string())?;
        match reader.read(&mut buf) {
            Ok(0) => {
                return Err(format!(
                    "established, then closed after {got} of {resp} bytes"
                ));
            }
            Ok(n) => got += n,
            Err(e) => return Err(format!("established, then {e} after {got} of {resp} bytes")),
        }
    }
    Ok(name)
}

/// TCP connect from a chosen source address (bind before connect, which std lacks).
fn connect_from(src: IpAddr, target: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    sock::connect_from(src, target, timeout)
}

/// One UDP request/response from source port `sport` (0: any); returns the answering server's
/// name.
pub fn probe_udp(
    target: SocketAddr,
    bind: Option<IpAddr>,
    sport: u16,
    token: &str,
    timeout: Duration,
) -> Result<String, String> {
    let src = bind.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let s = UdpSocket::bind((src, sport)).map_err(|e| format!("bind: {e}"))?;
    s.connect(target).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.send(format!("{token}\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf).map_err(|e| format!("receive: {e}"))?;
    check_answer(&String::from_utf8_lossy(&buf[..n]), token)
}

mod sock {
    //! Bind-then-connect for TCP with a timeout, over raw `libc` calls.
    use std::net::{IpAddr, SocketAddr, TcpStream};
    use std::os::fd::FromRawFd;
    use std::time::Duration;

    fn sockaddr(ip: IpAddr, port: u16) -> Result<libc::sockaddr_in, String> {
        let IpAddr::V4(v4) = ip else {
            return Err("only IPv4 is supported".into());
        };
        // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = port.to_be();
        sa.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
        Ok(sa)
    }

    pub(super) fn connect_from(
        src: IpAddr,
        target: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpStream, String> {
        let local = sockaddr(src, 0)?;
        let remote = sockaddr(target.ip(), target.port())?;
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: plain socket syscalls on a descriptor we own; the descriptor is handed to
        // TcpStream (which closes it) right after creation.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(format!("socket: {}", std::io::Error::last_os_error()));
            }
            let stream = TcpStream::from_raw_fd(fd);
            let one: libc::c_int = 1;
            // Allow binding an address that is not (or not yet) local, as a load balancer would.
            libc::setsockopt(
                fd,
                libc::SOL_IP,
                libc::IP_FREEBIND,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0 {
                return Err(format!("bind {src}: {}", std::io::Error::last_os_error()));
            }
            stream.set_nonblocking(true).map_err(|e| e.to_string())?;
            let r = libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len);
            if r != 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EINPROGRESS) {
                    return Err(format!("connect: {err}"));
                }
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
                match libc::poll(&mut pfd, 1, ms) {
                    0 => return Err("connect: timed out".into()),
                    n if n < 0 => {
                        return Err(format!("poll: {}", std::io::Error::last_os_error()));
                    }
                    _ => {}
                }
                if let Some(e) = stream.take_error().map_err(|e| e.to_string())? {
                    return Err(format!("connect: {e}"));
                }
            }
            stream.set_nonblocking(false).map_err(|e| e.to_string())?;
            Ok(stream)
        }
    }
}
