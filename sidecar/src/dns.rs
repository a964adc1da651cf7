//! DNS lookups timed query by query, the way the app's resolver makes them.
//!
//! A lookup "as the app sees it" walks the search list ([`resolv::candidates`]) and asks
//! A and AAAA for each candidate in parallel (glibc's default), stopping at the first
//! candidate with an answer; the "fqdn" mode asks only the name itself. Every query is one
//! UDP exchange built with hickory-proto, so nothing is cached between probes and each
//! query's latency, rcode and nameserver are known exactly.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RecordType},
};
use serde::Serialize;
use tokio::net::UdpSocket;

use crate::resolv::{ResolvConf, candidates};

/// Outcome of one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rcode {
    NoError,
    NxDomain,
    ServFail,
    Refused,
    Other,
    /// No answer within the resolver's timeout on any attempt.
    Timeout,
    /// The socket or the reply was unusable.
    Error,
}

impl Rcode {
    pub fn as_str(self) -> &'static str {
        match self {
            Rcode::NoError => "noerror",
            Rcode::NxDomain => "nxdomain",
            Rcode::ServFail => "servfail",
            Rcode::Refused => "refused",
            Rcode::Other => "other",
            Rcode::Timeout => "timeout",
            Rcode::Error => "error",
        }
    }
}

/// One query on the wire.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryRecord {
    pub name: String,
    pub qtype: &'static str,
    pub nameserver: Option<SocketAddr>,
    pub rcode: Rcode,
    pub answers: usize,
    pub seconds: f64,
}

/// How a lookup is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Through the search list, as the app's resolver does.
    AsApp,
    /// The name alone (as with a trailing dot).
    Fqdn,
    /// Only the search-list names the app's resolver asks before the name itself (none
    /// when the name has `ndots` dots or more): the tax every external name pays, probed
    /// without configuration for [`TYPICAL_EXTERNAL_NAME`], whose own query is not sent
    /// (it would leave the cluster, and fail where there is no way out).
    SearchWalk,
}

/// A name like the ones API services call (two dots: `api.stripe.com`), reserved by
/// RFC 2606, so its search-list candidates exist nowhere.
pub const TYPICAL_EXTERNAL_NAME: &str = "api.example.com";

/// One lookup: every query it took, and how long the app waited.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lookup {
    pub target: String,
    pub mode: Mode,
    /// The candidate that answered, if any.
    pub answered_by: Option<String>,
    pub queries: Vec<QueryRecord>,
    pub seconds: f64,
}

impl Lookup {
    /// `ok`, `nxdomain`, `timeout`, `servfail` or `error`, like the app would see it.
    pub fn result(&self) -> &'static str {
        if self.answered_by.is_some() {
            "ok"
        } else if self.queries.iter().any(|q| q.rcode == Rcode::Timeout) {
            "timeout"
        } else if self.queries.iter().any(|q| q.rcode == Rcode::ServFail) {
            "servfail"
        } else if self
            .queries
            .iter()
            .all(|q| matches!(q.rcode, Rcode::NxDomain | Rcode::NoError))
        {
            "nxdomain"
        } else {
            "error"
        }
    }
}

fn rcode_of(code: ResponseCode) -> Rcode {
    match code {
        ResponseCode::NoError => Rcode::NoError,
        ResponseCode::NXDomain => Rcode::NxDomain,
        ResponseCode::ServFail => Rcode::ServFail,
        ResponseCode::Refused => Rcode::Refused,
        _ => Rcode::Other,
    }
}

/// Sends one query to `nameserver` and waits up to `timeout` for its reply.
async fn exchange(
    nameserver: SocketAddr,
    name: &Name,
    qtype: RecordType,
    timeout: Duration,
) -> Result<(Rcode, usize), Rcode> {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name.clone(), qtype));
    let id = message.metadata.id;
    let bytes = message.to_vec().map_err(|_| Rcode::Error)?;
    let bind: SocketAddr = if nameserver.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(bind).await.map_err(|_| Rcode::Error)?;
    socket
        .send_to(&bytes, nameserver)
        .await
        .map_err(|_| Rcode::Error)?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let received = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await;
        let (len, from) = match received {
            Err(_) => return Err(Rcode::Timeout),
            Ok(Err(_)) => return Err(Rcode::Error),
            Ok(Ok(r)) => r,
        };
        // Ignore strays: another sender, or a late reply to an earlier query.
        if from != nameserver {
            continue;
        }
        let Ok(reply) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        if reply.metadata.id != id {
            continue;
        }
        return Ok((rcode_of(reply.metadata.response_code), reply.answers.len()));
    }
}

/// One query as the resolver makes it: each attempt tries the nameservers in order with
/// the per-try timeout; the record carries the total time and the final outcome.
pub async fn query(
    conf: &ResolvConf,
    nameservers: &[SocketAddr],
    fqdn: &str,
    qtype: RecordType,
) -> QueryRecord {
    let started = Instant::now();
    let qname = if qtype == RecordType::A { "A" } else { "AAAA" };
    let record = |nameserver, rcode, answers| QueryRecord {
        name: fqdn.to_string(),
        qtype: qname,
        nameserver,
        rcode,
        answers,
        seconds: started.elapsed().as_secs_f64(),
    };
    let Ok(name) = Name::from_ascii(fqdn) else {
        return record(None, Rcode::Error, 0);
    };
    let timeout = Duration::from_secs(u64::from(conf.timeout.max(1)));
    let mut last = (None, Rcode::Timeout);
    for _ in 0..conf.attempts.max(1) {
        for ns in nameservers {
            match exchange(*ns, &name, qtype, timeout).await {
                Ok((rcode, answers)) => return record(Some(*ns), rcode, answers),
                Err(rcode) => last = (Some(*ns), rcode),
            }
        }
    }
    record(last.0, last.1, 0)
}

/// Nameserver addresses from resolv.conf (port 53 unless `port` overrides it for tests).
pub fn nameserver_addrs(conf: &ResolvConf, port: u16) -> Vec<SocketAddr> {
    conf.nameservers
        .iter()
        .filter_map(|ns| ns.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// Resolves `target` as the app would (or as an FQDN), timing every query.
pub async fn lookup(
    conf: &ResolvConf,
    nameservers: &[SocketAddr],
    target: &str,
    mode: Mode,
) -> Lookup {
    lookup_reporting(conf, nameservers, target, mode, |_| {}).await
}

/// As [`lookup`], handing each query to `on_query` as soon as it is done: a lookup
/// against dead nameservers takes the resolver's timeout for every query (minutes for a
/// search walk), and its timeouts are evidence long before the lookup ends.
pub async fn lookup_reporting(
    conf: &ResolvConf,
    nameservers: &[SocketAddr],
    target: &str,
    mode: Mode,
    mut on_query: impl FnMut(&QueryRecord),
) -> Lookup {
    let started = Instant::now();
    let absolute = format!("{}.", target.trim_end_matches('.'));
    let names = match mode {
        Mode::AsApp => candidates(target, conf),
        Mode::Fqdn => vec![absolute],
        Mode::SearchWalk => candidates(target, conf)
            .into_iter()
            .take_while(|n| *n != absolute)
            .collect(),
    };
    let mut queries = Vec::new();
    let mut answered_by = None;
    for name in names {
        // glibc sends A and AAAA together (unless single-request is set).
        let (a, aaaa) = if conf.single_request || conf.single_request_reopen {
            let a = query(conf, nameservers, &name, RecordType::A).await;
            (a, query(conf, nameservers, &name, RecordType::AAAA).await)
        } else {
            tokio::join!(
                query(conf, nameservers, &name, RecordType::A),
                query(conf, nameservers, &name, RecordType::AAAA)
            )
        };
        let answered = a.answers + aaaa.answers > 0;
        on_query(&a);
        on_query(&aaaa);
        queries.push(a);
        queries.push(aaaa);
        if answered {
            answered_by = Some(name);
            break;
        }
    }
    Lookup {
        target: target.to_string(),
        mode,
        answered_by,
        queries,
        seconds: started.elapsed().as_secs_f64(),
    }
}
