//! The pod's resolver configuration and the names its resolver really queries.
//!
//! The kubelet writes one resolv.conf per pod, so the sidecar reads the app's own file.
//! Python caches no DNS and glibc walks the search list itself: with Kubernetes'
//! `ndots:5`, `api.example.com` is first tried as `api.example.com.<ns>.svc.cluster.local.`
//! and so on, each as A and AAAA. [`candidates`] reproduces that order exactly.

use serde::Serialize;

/// What the resolver reads from resolv.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
    pub ndots: u8,
    /// Seconds per try.
    pub timeout: u8,
    pub attempts: u8,
    pub rotate: bool,
    /// glibc's workaround for the conntrack A/AAAA race (musl ignores it).
    pub single_request_reopen: bool,
    pub single_request: bool,
}

impl Default for ResolvConf {
    /// glibc's defaults when resolv.conf says nothing.
    fn default() -> Self {
        ResolvConf {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: 5,
            attempts: 2,
            rotate: false,
            single_request_reopen: false,
            single_request: false,
        }
    }
}

/// glibc's caps: `ndots` ≤ 15, `timeout` ≤ 30, `attempts` ≤ 5, at most 3 nameservers
/// and 6 search domains (older glibc; newer ones allow more, but Kubernetes warns above 6).
const MAX_NAMESERVERS: usize = 3;

/// Parses resolv.conf text. Unknown lines are ignored, as the resolver does; a later
/// `search` or `domain` line replaces an earlier one.
pub fn parse(text: &str) -> ResolvConf {
    let mut conf = ResolvConf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ns) = words.next()
                    && conf.nameservers.len() < MAX_NAMESERVERS
                {
                    conf.nameservers.push(ns.to_string());
                }
            }
            Some("search") => {
                conf.search = words.map(|w| w.trim_end_matches('.').to_string()).collect()
            }
            Some("domain") => {
                conf.search = words
                    .next()
                    .map(|d| vec![d.trim_end_matches('.').to_string()])
                    .unwrap_or_default()
            }
            Some("options") => {
                for opt in words {
                    let (key, value) = opt.split_once(':').unwrap_or((opt, ""));
                    let number = |max: u8| {
                        value
                            .parse::<u32>()
                            .ok()
                            .map(|v| v.min(u32::from(max)) as u8)
                    };
                    match key {
                        "ndots" => conf.ndots = number(15).unwrap_or(conf.ndots),
                        "timeout" => conf.timeout = number(30).unwrap_or(conf.timeout).max(1),
                        "attempts" => conf.attempts = number(5).unwrap_or(conf.attempts).max(1),
                        "rotate" => conf.rotate = true,
                        "single-request-reopen" => conf.single_request_reopen = true,
                        "single-request" => conf.single_request = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    conf
}

/// The fully-qualified names glibc tries for `name`, in order: a name with at least
/// `ndots` dots is tried as-is first, then with each search suffix; otherwise the search
/// suffixes come first and the name as-is last. A trailing dot means exactly that name.
pub fn candidates(name: &str, conf: &ResolvConf) -> Vec<String> {
    if let Some(absolute) = name.strip_suffix('.') {
        return vec![format!("{absolute}.")];
    }
    let absolute = format!("{name}.");
    let searched = conf.search.iter().map(|d| format!("{name}.{d}."));
    let dots = name.matches('.').count();
    if dots >= usize::from(conf.ndots) {
        std::iter::once(absolute).chain(searched).collect()
    } else {
        searched.chain(std::iter::once(absolute)).collect()
    }
}

/// What the resolver configuration alone says about one probed name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchExpansion {
    pub name: String,
    /// Names the resolver tries, in order.
    pub candidates: Vec<String>,
    /// Queries before the real name is asked (A and AAAA each): the ndots tax of an
    /// external name that only resolves as itself.
    pub queries_before_name: usize,
}

/// The static DNS finding for each configured name.
pub fn search_expansions(conf: &ResolvConf, names: &[String]) -> Vec<SearchExpansion> {
    names
        .iter()
        .map(|name| {
            let c = candidates(name, conf);
            let absolute = format!("{}.", name.trim_end_matches('.'));
            let position = c.iter().position(|n| *n == absolute).unwrap_or(0);
            SearchExpansion {
                name: name.clone(),
                queries_before_name: 2 * position,
                candidates: c,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBERNETES: &str = "\
search prod.svc.cluster.local svc.cluster.local cluster.local ec2.internal
nameserver 10.96.0.10
options ndots:5
";

    #[test]
    fn parses_a_kubernetes_resolv_conf() {
        let c = parse(KUBERNETES);
        assert_eq!(c.nameservers, ["10.96.0.10"]);
        assert_eq!(c.search.len(), 4);
        assert_eq!((c.ndots, c.timeout, c.attempts), (5, 5, 2));
    }

    #[test]
    fn ndots_5_walks_the_whole_search_list_before_the_real_name() {
        let c = parse(KUBERNETES);
        let names = candidates("api.example.com", &c);
        assert_eq!(
            names,
            [
                "api.example.com.prod.svc.cluster.local.",
                "api.example.com.svc.cluster.local.",
                "api.example.com.cluster.local.",
                "api.example.com.ec2.internal.",
                "api.example.com.",
            ]
        );
    }

    #[test]
    fn ndots_2_tries_the_name_first_and_a_trailing_dot_only_the_name() {
        let c = parse(&KUBERNETES.replace("ndots:5", "ndots:2"));
        assert_eq!(candidates("api.example.com", &c)[0], "api.example.com.");
        assert_eq!(candidates("redis", &c)[0], "redis.prod.svc.cluster.local.");
        assert_eq!(candidates("api.example.com.", &c), ["api.example.com."]);
    }

    #[test]
    fn options_are_clamped_and_later_search_lines_win() {
        let c = parse(
            "search a.b\ndomain c.d\noptions ndots:40 timeout:0 attempts:9 rotate single-request-reopen\nnameserver 1.1.1.1 # x\nnameserver 2.2.2.2\nnameserver 3.3.3.3\nnameserver 4.4.4.4\n",
        );
        assert_eq!(c.search, ["c.d"]);
        assert_eq!((c.ndots, c.timeout, c.attempts), (15, 1, 5));
        assert!(c.rotate && c.single_request_reopen);
        assert_eq!(c.nameservers.len(), 3, "glibc uses the first three");
    }
}
