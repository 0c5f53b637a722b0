//! The flag table checked against itself: every default shown parses back,
//! every flag and every variable sets what it shows, and --help lists them all.

use super::*;

fn parse_with(args: &[&str], env: &[(&str, &str)]) -> Result<Command, String> {
    let env = |name: &str| {
        env.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_string())
    };
    parse_args(args.iter().map(|s| s.to_string()), env)
}

fn parse(args: &[&str]) -> Result<Command, String> {
    parse_with(args, &[])
}

fn serve(args: &[&str], env: &[(&str, &str)]) -> Config {
    match parse_with(args, env) {
        Ok(Command::Serve(config)) => *config,
        other => panic!("{args:?} {env:?}: expected serve, got {other:?}"),
    }
}

/// The whole configuration, to compare two: every field is in it.
fn fields(config: &Config) -> String {
    format!("{config:?}")
}

/// A value other than the default for each flag; a flag added to the
/// table without one here fails the tests that use it.
fn sample(flag: &Flag) -> &'static str {
    match flag.takes {
        Takes::Nothing => "",
        Takes::One("ADDR") => "0.0.0.0:9999",
        Takes::One("DIR" | "FILE") => "/tmp/somewhere",
        Takes::One("BYTES") => "4096",
        Takes::One("N") => "7",
        Takes::One("DURATION") => "3m",
        Takes::Many("ORIGIN") => "https://chat.example",
        Takes::One("URL") => "redis://127.0.0.1:6390",
        Takes::One("PREFIX") => "other:",
        Takes::One("PATH") => "/echo",
        Takes::One("LEVEL") => "debug",
        Takes::Many("HOST:PORT") => "10.0.0.1:26379",
        Takes::One("NAME") => "mymaster",
        Takes::One("PASSWORD") => "secret",
        takes => panic!("{}: no sample value for {takes:?}", flag.name),
    }
}

#[test]
fn durations_need_a_unit() {
    assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
    assert_eq!(parse_duration("9s"), Ok(Duration::from_secs(9)));
    assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
    assert!(parse_duration("9").is_err());
    assert!(parse_duration("0s").is_err());
    assert_eq!(parse_delay("0s"), Ok(Duration::ZERO));
    assert_eq!(parse_delay("24m"), Ok(Duration::from_secs(24 * 60)));
    assert!(parse_delay("1441m").is_err(), "over a day");
    assert!(parse_delay("18446744073709551615m").is_err(), "overflows");
    assert!(parse_duration("s").is_err());
}

#[test]
fn durations_are_shown_in_the_largest_exact_unit() {
    for (millis, shown) in [
        (0, "0s"),
        (300, "300ms"),
        (1500, "1500ms"),
        (9000, "9s"),
        (90_000, "90s"),
        (600_000, "10m"),
        (43_200_000, "12h"),
    ] {
        let duration = Duration::from_millis(millis);
        assert_eq!(show_duration(duration), shown);
        assert_eq!(parse_delay(shown), Ok(duration));
    }
}

#[test]
fn flags_override_defaults() {
    let config = serve(
        &[
            "--listen",
            "0.0.0.0:9000",
            "--max-message=1024",
            "--allowed-origin",
            "https://Example.com/",
            "--allowed-origin",
            "http://a.test",
        ],
        &[],
    );
    assert_eq!(config.listen.port(), 9000);
    assert_eq!(config.max_message, 1024);
    assert_eq!(
        config.allowed_origins,
        vec!["https://example.com", "http://a.test"]
    );
    assert_eq!(config.ping_interval, Duration::from_secs(9));
}

#[test]
fn bad_flags_are_reported() {
    assert!(parse(&["--nope"]).unwrap_err().contains("unknown argument"));
    assert!(
        parse(&["--max-message"])
            .unwrap_err()
            .contains("needs a value")
    );
    assert!(parse(&["--max-message", "0"]).is_err());
    assert!(parse(&["--listen", "nowhere"]).is_err());
    assert!(parse(&["--reuse-port=yes"]).is_err());
    assert!(parse(&["--echo-path", "echo"]).is_err());
}

#[test]
fn every_default_shown_parses_back_to_the_default() {
    let defaults = Config::default();
    for flag in FLAGS {
        let Some(shown) = (flag.show)(&defaults) else {
            assert!(!flag.unset.is_empty(), "{}: no default to show", flag.name);
            continue;
        };
        assert!(
            flag.unset.is_empty(),
            "{}: unset text never shown",
            flag.name
        );
        let args = match flag.takes {
            Takes::Nothing => vec![flag.name],
            _ => vec![flag.name, shown.as_str()],
        };
        let config = serve(&args, &[]);
        assert_eq!(fields(&config), fields(&defaults), "{args:?}");
    }
}

/// The flags a flag needs beside it to mean anything (`check_redis_flags`).
fn companions(flag: &Flag) -> Vec<&'static str> {
    let tls = ["--redis", "rediss://h:1"];
    let sentinel = ["--redis-sentinel", "10.0.0.2:26379", "--redis-master", "m"];
    match flag.name {
        "--redis-ca" => tls.to_vec(),
        "--redis-cert" | "--redis-key" => tls.to_vec(),
        "--redis-sentinel" => vec!["--redis-master", "m"],
        "--redis-master" => vec!["--redis-sentinel", "10.0.0.2:26379"],
        "--redis-sentinel-password" => sentinel.to_vec(),
        _ => Vec::new(),
    }
}

#[test]
fn every_flag_sets_what_it_shows() {
    for flag in FLAGS {
        let with = companions(flag);
        // What the companions set alone (the defaults, where they mean
        // nothing alone: a sentinel without a master's name, and back).
        let before = match parse(&with) {
            Ok(Command::Serve(config)) => *config,
            _ => Config::default(),
        };
        let mut args = vec![flag.name];
        if !matches!(flag.takes, Takes::Nothing) {
            args.push(sample(flag));
        }
        args.extend(&with);
        let config = serve(&args, &[]);
        assert_ne!(fields(&config), fields(&before), "{args:?} changed nothing");
        assert_ne!((flag.show)(&config), (flag.show)(&before), "{args:?}");
    }
}

#[test]
fn every_flag_is_read_from_its_environment_variable() {
    for flag in FLAGS {
        let var = flag.env_var();
        let with = companions(flag);
        let (mut args, value) = match flag.takes {
            Takes::Nothing => (vec![flag.name], "yes"),
            _ => (vec![flag.name, sample(flag)], sample(flag)),
        };
        args.extend(&with);
        let from_env = serve(&with, &[(&var, value)]);
        let from_args = serve(&args, &[]);
        assert_eq!(fields(&from_env), fields(&from_args), "{var}={value}");
    }
}

#[test]
fn redis_flags_that_need_each_other_are_refused_alone() {
    for (args, why) in [
        (&["--redis-sentinel", "h:1"][..], "needs --redis-master"),
        (&["--redis-master", "m"], "needs --redis-sentinel"),
        (
            &["--redis-sentinel-password", "p"],
            "needs --redis-sentinel",
        ),
        (&["--redis-ca", "ca.pem"], "need a rediss://"),
        (
            &["--redis", "redis://h:1", "--redis-ca", "ca.pem"],
            "need a rediss://",
        ),
    ] {
        let refused = parse(args).err().unwrap_or_default();
        assert!(refused.contains(why), "{args:?}: {refused:?}");
    }
}

#[test]
fn environment_variables_are_named_after_their_flags() {
    let names: Vec<String> = FLAGS.iter().map(Flag::env_var).collect();
    assert!(names.contains(&"CHAT_LISTEN".to_string()));
    assert!(names.contains(&"CHAT_MAX_CONNECTIONS_PER_IP".to_string()));
    for (i, name) in names.iter().enumerate() {
        assert!(!names[..i].contains(name), "{name} twice");
    }
}

#[test]
fn the_command_line_beats_the_environment() {
    let env = [
        ("CHAT_LISTEN", "0.0.0.0:1"),
        ("CHAT_ALLOWED_ORIGIN", "http://a.test, http://b.test,"),
        ("CHAT_MAX_MESSAGE", "2048"),
    ];
    let config = serve(
        &[
            "--listen",
            "127.0.0.1:2",
            "--allowed-origin",
            "http://c.test",
        ],
        &env,
    );
    assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 2)));
    assert_eq!(config.allowed_origins, vec!["http://c.test"]);
    assert_eq!(config.max_message, 2048, "the rest still comes from env");

    let config = serve(&[], &env);
    assert_eq!(
        config.allowed_origins,
        vec!["http://a.test", "http://b.test"]
    );
    // A bad variable does not matter when its flag is given.
    serve(&["--max-message", "10"], &[("CHAT_MAX_MESSAGE", "abc")]);
}

#[test]
fn a_bad_environment_value_names_its_variable() {
    assert_eq!(
        parse_with(&[], &[("CHAT_MAX_MESSAGE", "abc")]).unwrap_err(),
        "CHAT_MAX_MESSAGE=abc: must be a positive whole number"
    );
    let err = parse_with(&[], &[("CHAT_REUSE_PORT", "maybe")]).unwrap_err();
    assert!(err.starts_with("CHAT_REUSE_PORT=maybe: "), "{err}");
    let err = parse_with(&[], &[("CHAT_PING_INTERVAL", "9")]).unwrap_err();
    assert!(err.starts_with("CHAT_PING_INTERVAL=9: "), "{err}");
    // Neither --help nor a subcommand reads the environment.
    assert!(matches!(
        parse_with(&["--help"], &[("CHAT_MAX_MESSAGE", "abc")]),
        Ok(Command::Help)
    ));
    assert!(matches!(
        parse_with(&["hash-password"], &[("CHAT_MAX_MESSAGE", "abc")]),
        Ok(Command::HashPassword)
    ));
}

#[test]
fn a_switch_variable_is_on_off_or_an_error() {
    for on in ["1", "true", "yes", "YES"] {
        assert!(serve(&[], &[("CHAT_REUSE_PORT", on)]).reuse_port, "{on}");
    }
    for off in ["0", "false", "no", ""] {
        assert!(!serve(&[], &[("CHAT_REUSE_PORT", off)]).reuse_port, "{off}");
    }
    assert!(parse_with(&[], &[("CHAT_REUSE_PORT", "2")]).is_err());
}

#[test]
fn an_empty_variable_is_unset() {
    let config = serve(&[], &[("CHAT_LISTEN", ""), ("CHAT_ALLOWED_ORIGIN", "")]);
    assert_eq!(fields(&config), fields(&Config::default()));
}

#[test]
fn help_shows_every_flag_its_default_and_its_variable() {
    let help = help_text();
    let defaults = Config::default();
    for flag in FLAGS {
        let lines: Vec<&str> = help
            .lines()
            .filter(|line| line.trim_start().starts_with(&format!("{} ", flag.name)))
            .collect();
        assert_eq!(lines.len(), 1, "{}: {lines:?}", flag.name);
        let line = lines[0];
        let default = flag.default_text(&defaults);
        assert!(!default.is_empty(), "{}: empty default", flag.name);
        assert!(line.contains(&format!("[default: {default}]")), "{line}");
        assert!(
            line.contains(&format!("[env: {}]", flag.env_var())),
            "{line}"
        );
        assert!(line.contains(flag.placeholder()), "{line}");
    }
    assert!(help.contains("[default: 127.0.0.1:8080]"));
    assert!(help.contains("[default: 9s]"));
    assert!(help.contains("chat-server hash-password"));
    assert!(matches!(parse(&["--help"]), Ok(Command::Help)));
}

#[test]
fn zero_connections_means_the_file_limit() {
    let defaults = Config::default();
    assert_eq!(defaults.max_connections, 0);
    assert!(
        defaults.effective_max_connections() > 0,
        "the default server admits"
    );
    assert_eq!(
        serve(&["--max-connections", "0"], &[]).effective_max_connections(),
        defaults.effective_max_connections()
    );
    assert_eq!(
        serve(&["--max-connections", "5"], &[]).effective_max_connections(),
        5
    );
    let flag = FLAGS.iter().find(|flag| flag.name == "--max-connections");
    let unset = flag.map_or("", |flag| flag.unset);
    assert!(unset.contains(&format!("minus {FILE_HEADROOM}")), "{unset}");
    assert_eq!(
        serve(&["--max-connections-per-ip", "0"], &[]).max_connections_per_ip,
        0
    );
}
