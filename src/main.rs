//! chat-server: flags and environment -> configuration, logging, the server, the exit code.

use std::io::BufRead;
use std::process::ExitCode;

use chat_server::config::{self, Command};
use chat_server::{Config, Server, hash_password, revoke_user};

fn main() -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    let command = match config::parse_args(std::env::args().skip(1), env) {
        Ok(command) => command,
        Err(err) => {
            eprintln!("chat-server: {err}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            print!("{}", config::help_text());
            ExitCode::SUCCESS
        }
        Command::HashPassword => hash_password_from_stdin(),
        Command::Revoke { user, session_key } => revoke(&user, &session_key),
        Command::Serve(config) => serve(*config),
    }
}

fn serve(config: Config) -> ExitCode {
    let logger_config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_target_level(log::LevelFilter::Off)
        .set_thread_level(log::LevelFilter::Off)
        .build();
    let _ = simplelog::WriteLogger::init(config.log_level, logger_config, std::io::stderr());

    let mut server = match Server::new(config) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("chat-server: {err}");
            return ExitCode::FAILURE;
        }
    };
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("event loop failed: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `chat-server hash-password`: one password on stdin, its hash on stdout.
fn hash_password_from_stdin() -> ExitCode {
    let mut line = String::new();
    if let Err(err) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("chat-server: cannot read the password: {err}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("chat-server: empty password (type it on stdin)");
        return ExitCode::FAILURE;
    }
    match hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("chat-server: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `chat-server revoke USER --session-key FILE`: a line beside the key file
/// that every server using it reads at its next session check.
fn revoke(user: &str, session_key: &std::path::Path) -> ExitCode {
    if let Err(err) = std::fs::metadata(session_key) {
        eprintln!("chat-server: {}: {err}", session_key.display());
        return ExitCode::FAILURE;
    }
    match revoke_user(session_key, user, std::time::SystemTime::now()) {
        Ok(path) => {
            println!(
                "every session of {user} issued until now is ended (recorded in {})",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("chat-server: {err}");
            ExitCode::FAILURE
        }
    }
}
