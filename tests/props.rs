//! Property tests (proptest) of every parser that reads input prewarm does
//! not control: the configuration, image references, `WWW-Authenticate`,
//! `hosts.toml`, list files, and the gzip/zstd size probes. Two kinds of
//! property each: any input gives an answer or an error, never a panic;
//! and generated well-formed input parses back to what was generated.
//! (The tar path resolver has its own in `tests/extract.rs`.) Runs as any
//! user; no daemons.

use prewarm::config::source::{ListSource, SourceKind};
use prewarm::config::{self, Overrides};
use prewarm::estimate;
use prewarm::reference::Reference;
use prewarm::registry::auth::parse_challenges;
use prewarm::registry::hosts;
use proptest::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// The configuration.

/// Keys the configuration knows, with values of every TOML type, so that
/// the generated fragments reach the validators and not only the parser.
fn fragment() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "pull.deadline",
        "pull.retries",
        "pull.concurrency",
        "pull.layer-concurrency",
        "pull.read-timeout",
        "pull.platform",
        "pull.unpack",
        "pull.metrics-file",
        "throttle.bandwidth",
        "throttle.write-bandwidth",
        "disk.reserve",
        "disk.path",
        "containerd.socket",
        "containerd.namespace",
        "containerd.snapshotter",
        "containerd.pin",
        "handoff.mode",
        "handoff.on-deadline",
        "handoff.give-up-after",
        "registry.config-path",
        "version",
        "nonsense.key",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "[0-9]{0,25}(\\.[0-9]{0,3})?[ ]?(B|KiB|MiB|GiB|TiB|kb|MB|ms|s|m|h|/s|MiB/s|x)?"
            .prop_map(|s| format!("{s:?}")),
        "[0-9smhx]{0,30}".prop_map(|s| format!("{s:?}")),
        ".{0,20}".prop_map(|s| format!("{s:?}")),
        Just("[]".to_string()),
        Just("{}".to_string()),
    ];
    prop::collection::vec((key, value), 0..8).prop_map(|kvs| {
        let mut text = String::new();
        for (k, v) in kvs {
            match k.split_once('.') {
                Some((table, key)) => text.push_str(&format!("[{table}]\n{key} = {v}\n")),
                None => text.push_str(&format!("{k} = {v}\n")),
            }
        }
        text
    })
}

proptest! {
    #![proptest_config(cases(2000))]

    /// Any fragment text: settings or an error naming the fragment.
    #[test]
    fn any_fragment_is_loaded_or_refused_naming_its_file(text in "\\PC{0,200}") {
        let path = PathBuf::from("/etc/prewarm/config.d/50-x.toml");
        if let Err(e) = config::load_str(&[(path, text)], &Overrides::default()) {
            prop_assert!(e.to_string().contains("50-x.toml"), "{e}");
        }
    }

    /// Generated fragments with known keys and values of any type: loaded,
    /// or refused naming the file (and no panic in a validator).
    #[test]
    fn known_keys_with_any_values_are_loaded_or_refused_naming_the_file(text in fragment()) {
        let path = PathBuf::from("/etc/prewarm/config.d/50-x.toml");
        // Duplicate tables are a TOML error: named by the file too.
        if let Err(e) = config::load_str(&[(path, text.clone())], &Overrides::default()) {
            prop_assert!(e.to_string().contains("50-x.toml"), "{text}\n{e}");
        }
    }

    /// Sizes: any text is parsed or refused; a number with a unit is that
    /// many of the unit; a bare number other than zero is refused.
    #[test]
    fn sizes(text in "\\PC{0,40}", n in 0u64..1_000_000, unit in 0usize..6) {
        let _ = config::parse_bytes(&text);
        let _ = config::parse_rate(&text);
        let (name, mult) = [("B", 1u64), ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("KB", 1000), ("MB", 1_000_000)][unit];
        prop_assert_eq!(config::parse_bytes(&format!("{n}{name}")), Ok(n * mult));
        prop_assert_eq!(config::parse_bytes(&format!("{n} {name}")), Ok(n * mult));
        let bare = config::parse_bytes(&n.to_string());
        if n == 0 {
            prop_assert_eq!(bare, Ok(0));
        } else {
            prop_assert!(bare.unwrap_err().contains("needs a unit"));
        }
    }

    /// Durations: any text is parsed or refused (also numbers that
    /// overflow); generated ones add up.
    #[test]
    fn durations(
        text in "[0-9hms]{0,40}",
        big in prop::collection::vec((any::<u64>(), prop::sample::select(vec!["h", "m", "s", "ms"])), 1..4),
        h in 0u64..100, m in 0u64..100, s in 0u64..100, ms in 0u64..1000,
    ) {
        let _ = config::parse_duration(&text);
        let big: String = big.iter().map(|(n, u)| format!("{n}{u}")).collect();
        let _ = config::parse_duration(&big);
        let want = Duration::from_millis(((h * 60 + m) * 60 + s) * 1000 + ms);
        prop_assert_eq!(config::parse_duration(&format!("{h}h{m}m{s}s{ms}ms")), Ok(want));
    }
}

// ---------------------------------------------------------------------------
// Image references.

fn component() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9._-]{0,6}[a-z0-9])?"
}

/// A well-formed reference: a registry host (or none), a repository path,
/// a tag and/or a digest.
fn reference(
) -> impl Strategy<Value = (Option<String>, Vec<String>, Option<String>, Option<String>)> {
    // Without a host, a first component that looks like one (a dot, a
    // port, `localhost`) would be read as the host, as Docker reads it.
    (
        prop::option::of(prop_oneof![
            Just("localhost".to_string()),
            "[a-z0-9]{1,8}\\.[a-z]{2,4}",
            (1u16..=65535).prop_map(|p| format!("127.0.0.1:{p}")),
            ("[a-z0-9]{1,8}\\.[a-z]{2,4}", 1u16..=65535).prop_map(|(h, p)| format!("{h}:{p}")),
        ]),
        prop::collection::vec(component(), 1..4),
        prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        prop::option::of("[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}"))),
    )
        .prop_filter(
            "a first component that is not a host",
            |(domain, path, _, _)| {
                domain.is_some() || (!path[0].contains('.') && path[0] != "localhost")
            },
        )
}

proptest! {
    #![proptest_config(cases(3000))]

    /// Any text parses or is refused; what parses prints as a reference
    /// that parses to the same thing (normalizing is idempotent).
    #[test]
    fn any_reference_parses_or_is_refused(text in "\\PC{0,80}") {
        if let Ok(r) = Reference::parse(&text) {
            prop_assert_eq!(Reference::parse(&r.to_string()), Ok(r));
        }
    }

    /// Near-misses: a valid reference with one character changed or cut.
    #[test]
    fn mangled_references_parse_or_are_refused(
        (domain, path, tag, digest) in reference(),
        at in any::<prop::sample::Index>(),
        c in prop::sample::select(vec!['@', ':', '/', 'A', ' ', '.', '-', '\u{e9}', '\0']),
        cut in any::<bool>(),
    ) {
        let mut text = render(&domain, &path, &tag, &digest);
        let i = at.index(text.len() + 1);
        if cut {
            text.truncate(i);
        } else {
            text.insert(i, c);
        }
        if let Ok(r) = Reference::parse(&text) {
            prop_assert_eq!(Reference::parse(&r.to_string()), Ok(r));
        }
    }

    /// Generated references parse to their parts, Docker Hub's
    /// normalization included.
    #[test]
    fn well_formed_references_parse_to_their_parts((domain, path, tag, digest) in reference()) {
        let text = render(&domain, &path, &tag, &digest);
        let r = Reference::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let want_domain = domain.clone().unwrap_or_else(|| "docker.io".into());
        let mut want_repo = path.join("/");
        if domain.is_none() && path.len() == 1 {
            want_repo = format!("library/{want_repo}");
        }
        prop_assert_eq!(&r.domain, &want_domain);
        prop_assert_eq!(&r.repository, &want_repo);
        let want_tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag.clone(),
        };
        prop_assert_eq!(&r.tag, &want_tag);
        prop_assert_eq!(&r.digest, &digest);
        prop_assert_eq!(Reference::parse(&r.to_string()), Ok(r));
    }
}

fn render(
    domain: &Option<String>,
    path: &[String],
    tag: &Option<String>,
    digest: &Option<String>,
) -> String {
    let mut s = String::new();
    if let Some(d) = domain {
        s.push_str(d);
        s.push('/');
    }
    s.push_str(&path.join("/"));
    if let Some(t) = tag {
        s.push(':');
        s.push_str(t);
    }
    if let Some(d) = digest {
        s.push('@');
        s.push_str(d);
    }
    s
}

// ---------------------------------------------------------------------------
// WWW-Authenticate.

fn challenge() -> impl Strategy<Value = (String, Vec<(String, String)>)> {
    (
        prop::sample::select(vec!["Bearer", "Basic", "bearer", "Negotiate", "X-Custom"]),
        prop::collection::vec(
            (
                prop::sample::select(vec!["realm", "service", "scope", "error", "Charset"]),
                "[ -~]{0,24}",
            ),
            1..4,
        ),
    )
        .prop_map(|(s, p)| {
            (
                s.to_string(),
                p.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            )
        })
}

fn quote(v: &str) -> String {
    let mut out = String::from('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn any_www_authenticate_parses(text in "\\PC{0,120}") {
        for c in parse_challenges(&text) {
            prop_assert!(!c.scheme.is_empty());
            prop_assert_eq!(c.scheme.to_ascii_lowercase(), c.scheme.clone());
        }
    }

    /// Challenges written with quoted values (any printable ASCII, quotes
    /// and backslashes escaped) and any spacing read back as written.
    #[test]
    fn written_challenges_read_back(
        challenges in prop::collection::vec(challenge(), 1..4),
        space in prop::sample::select(vec!["", " ", "  ", "\t"]),
    ) {
        let header = challenges
            .iter()
            .map(|(scheme, params)| {
                let params: Vec<String> = params
                    .iter()
                    .map(|(k, v)| format!("{k}{space}={space}{}", quote(v)))
                    .collect();
                format!("{scheme} {}", params.join(&format!("{space},{space}")))
            })
            .collect::<Vec<_>>()
            .join(&format!("{space},{space}"));
        let parsed = parse_challenges(&header);
        prop_assert_eq!(parsed.len(), challenges.len(), "{}", header);
        for (got, (scheme, params)) in parsed.iter().zip(&challenges) {
            prop_assert_eq!(&got.scheme, &scheme.to_ascii_lowercase());
            let want: Vec<(String, String)> =
                params.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
            prop_assert_eq!(&got.params, &want, "{}", header);
        }
    }
}

// ---------------------------------------------------------------------------
// hosts.toml.

fn hosts_text() -> impl Strategy<Value = String> {
    let host_key = prop::sample::select(vec![
        "capabilities",
        "skip_verify",
        "override_path",
        "ca",
        "client",
        "header",
        "dial_timeout",
    ]);
    let value = prop_oneof![
        Just("[\"pull\", \"resolve\"]".to_string()),
        Just("[\"push\"]".to_string()),
        Just("[]".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        Just("\"\"".to_string()),
        Just("{ x-a = \"b\" }".to_string()),
        Just("{ x-a = [\"b\", \"c\"] }".to_string()),
        Just("{ \"bad header\" = \"\\u0000\" }".to_string()),
        Just("\"/nonexistent/ca.pem\"".to_string()),
        Just("[\"/nonexistent/a\", \"/nonexistent/b\"]".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[ -~]{0,20}".prop_map(|s| quote(&s)),
    ];
    let url = prop_oneof![
        (1u16..=65535).prop_map(|p| format!("http://127.0.0.1:{p}")),
        (1u16..=65535).prop_map(|p| format!("https://127.0.0.1:{p}/v2")),
        Just("127.0.0.1".to_string()),
        Just("https://".to_string()),
        Just("ftp://x".to_string()),
        "[ -~]{0,20}",
    ];
    (
        prop::option::of(url.clone()),
        prop::collection::vec((url, prop::collection::vec((host_key, value), 0..3)), 0..4),
    )
        .prop_map(|(server, hosts)| {
            let mut text = String::new();
            if let Some(s) = server {
                text.push_str(&format!("server = {}\n", quote(&s)));
            }
            for (url, keys) in hosts {
                text.push_str(&format!("[host.{}]\n", quote(&url)));
                for (k, v) in keys {
                    text.push_str(&format!("{k} = {v}\n"));
                }
            }
            text
        })
}

proptest! {
    #![proptest_config(cases(2000))]

    /// Any text, and generated files with every key and odd values: hosts,
    /// or an error naming the file.
    #[test]
    fn any_hosts_toml_is_parsed_or_refused_naming_the_file(text in prop_oneof![hosts_text(), "\\PC{0,120}"]) {
        let dir = Path::new("/etc/containerd/certs.d/reg.test");
        let file = dir.join("hosts.toml");
        if let Err(e) = hosts::parse(dir, &file, &text, "reg.test") {
            prop_assert!(e.to_string().contains("hosts.toml"), "{text}\n{e}");
        }
    }

    /// Mirrors listed in order are tried in that order, then the server.
    #[test]
    fn listed_mirrors_keep_their_order(ports in prop::collection::vec(1024u16..=65535, 0..5), server in 1024u16..=65535) {
        let mut text = format!("server = \"http://127.0.0.1:{server}\"\n");
        for p in &ports {
            text.push_str(&format!("[host.\"http://127.0.0.1:{p}\"]\ncapabilities = [\"pull\", \"resolve\"]\n"));
        }
        let dir = Path::new("/etc/containerd/certs.d/reg.test");
        let got = hosts::parse(dir, &dir.join("hosts.toml"), &text, "reg.test")
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut want: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        want.push(format!("127.0.0.1:{server}"));
        // A host listed twice: compare the order of first mentions.
        let authorities: Vec<String> = got.iter().map(|h| h.authority()).collect();
        let mut dedup = Vec::new();
        for w in want {
            if !dedup.contains(&w) {
                dedup.push(w);
            }
        }
        let mut seen = Vec::new();
        for a in &authorities {
            if !seen.contains(a) {
                seen.push(a.clone());
            }
        }
        prop_assert_eq!(seen, dedup, "{}", text);
    }
}

// ---------------------------------------------------------------------------
// List files.

fn list_source() -> ListSource {
    ListSource {
        name: "team".into(),
        kind: SourceKind::File {
            path: "/etc/prewarm/images.list".into(),
        },
        timeout: Duration::from_secs(5),
        priority: 0,
        required: true,
        defined_in: "/etc/prewarm/config.toml".into(),
        key: "sources[0]".into(),
    }
}

proptest! {
    #![proptest_config(cases(2000))]

    /// Any text: a list, or an error naming the list and where in it.
    #[test]
    fn any_list_is_read_or_refused_naming_the_list(text in prop_oneof!["\\PC{0,200}", "(\\[\\[images\\]\\]\nref = \"[ -~]{0,10}\"\n(priority|required|x) = (1|true|\"a\")\n){0,3}"]) {
        let src = list_source();
        if let Err(e) = prewarm::sources::parse_list(&src, Path::new("/etc/prewarm/images.list"), &text, false) {
            prop_assert!(e.to_string().contains("team"), "{text}\n{e}");
        }
    }

    /// References, one per line with comments and blank lines, or as
    /// `[[images]]`: read back in order, each once.
    #[test]
    fn written_lists_read_back(
        refs in prop::collection::vec(reference(), 1..12),
        as_toml in any::<bool>(),
        noise in prop::collection::vec(prop::sample::select(vec!["", "# a comment", "   ", "\t# x"]), 12),
    ) {
        let texts: Vec<String> = refs.iter().map(|(d, p, t, g)| render(d, p, t, g)).collect();
        let mut body = String::new();
        if as_toml {
            body.push_str("version = 1\n");
            for t in &texts {
                body.push_str(&format!("[[images]]\nref = {}\n", quote(t)));
            }
        } else {
            for (t, n) in texts.iter().zip(&noise) {
                body.push_str(&format!("{n}\n  {t}   # why\n"));
            }
        }
        let list = prewarm::sources::parse_list(&list_source(), Path::new("/etc/prewarm/images.list"), &body, false)
            .map_err(|e| TestCaseError::fail(format!("{body}\n{e}")))?;
        let mut want: Vec<Reference> = Vec::new();
        for t in &texts {
            let r = Reference::parse(t).unwrap();
            if !want.contains(&r) {
                want.push(r);
            }
        }
        let got: Vec<Reference> = list.iter().map(|e| e.reference.clone()).collect();
        prop_assert_eq!(got, want);
        prop_assert!(list.iter().all(|e| e.required));
    }
}

// ---------------------------------------------------------------------------
// The size probes.

proptest! {
    #![proptest_config(cases(500))]

    /// Any trailer or header bytes: a size or none, never a panic.
    #[test]
    fn probes_take_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..40), compressed in any::<u64>(), guess in any::<u64>()) {
        let _ = estimate::gzip_isize(&bytes, compressed, guess);
        let _ = estimate::zstd_content_size(&bytes, compressed);
        let mut zstd = vec![0x28, 0xB5, 0x2F, 0xFD];
        zstd.extend(&bytes);
        let _ = estimate::zstd_content_size(&zstd, compressed);
    }

    /// A real gzip member: the probe is the size modulo 2³², and the size
    /// itself when the guess is within 2 GiB of it.
    #[test]
    fn gzip_probe_finds_the_size(data in prop::collection::vec(any::<u8>(), 0..20_000), repeat in 1usize..50, off in any::<i32>()) {
        let data = data.repeat(repeat);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&data).unwrap();
        let gz = enc.finish().unwrap();
        let len = data.len() as u64;
        let guess = (len as i64 + off as i64).max(0) as u64;
        let got = estimate::gzip_isize(&gz[gz.len() - 8..], gz.len() as u64, guess).unwrap();
        prop_assert_eq!(got % (1 << 32), len);
        prop_assert_eq!(got, len, "guess {}", guess);
    }

    /// A real zstd frame with its size recorded: the probe says it.
    #[test]
    fn zstd_probe_finds_the_size(data in prop::collection::vec(any::<u8>(), 0..20_000), repeat in 1usize..50) {
        let data = data.repeat(repeat);
        let z = zstd::bulk::compress(&data, 3).unwrap();
        let n = z.len().min(estimate::ZSTD_HEADER_MAX as usize);
        prop_assert_eq!(estimate::zstd_content_size(&z[..n], z.len() as u64), Some(data.len() as u64));
    }
}
