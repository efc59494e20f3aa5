//! The portcullis command line: run, check, demo, hash-key, hash-password, version.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis::server::{Runtime, StartError};

// A request allocates a few dozen small blocks (headers, bodies, futures);
// mimalloc's per-thread free lists serve them in far fewer instructions than
// glibc's malloc (bench/RESULTS.md has the figures). Its v2 line, not v3:
// v3 commits its arenas eagerly on Linux and kept 10,000 idle connections
// at 1.65 KiB resident each where v2 keeps them at 0.8-1.0 KiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A reverse proxy, load balancer and API gateway in one binary.
#[derive(Parser)]
#[command(name = "portcullis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a configuration file.
    Run {
        /// Configuration file (.yaml, .yml or .toml).
        #[arg(short, long, default_value = "portcullis.yaml")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit (0 valid, 1 with every error).
    Check {
        /// Configuration file (.yaml, .yml or .toml).
        #[arg(short, long, default_value = "portcullis.yaml")]
        config: PathBuf,
    },
    /// A self-contained tour: demo backends and a gateway on 127.0.0.1:8080.
    Demo,
    /// Print the SHA-256 of an API key, as `consumers[].api_keys` stores it.
    HashKey {
        /// The key; read from standard input (one line) when absent, which
        /// keeps it out of the shell's history.
        key: Option<String>,
    },
    /// Print a password's hash, as `consumers[].password_hash` stores it
    /// (argon2id, m=19456 KiB, t=2, p=1, random salt).
    HashPassword {
        /// Print a bcrypt hash (cost 12) instead.
        #[arg(long)]
        bcrypt: bool,
    },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("portcullis {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check { config } => with_runtime(check(config)),
        Command::HashKey { key } => hash_key(key),
        Command::HashPassword { bcrypt } => hash_password(bcrypt),
        Command::Run { config } => {
            init_logging();
            with_runtime(run(config))
        }
        Command::Demo => {
            init_logging();
            with_runtime(portcullis::demo::run())
        }
    }
}

fn hash_key(key: Option<String>) -> ExitCode {
    let key = match key {
        Some(k) => k,
        None => {
            let mut line = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut line) {
                eprintln!("cannot read the key from standard input: {e}");
                return ExitCode::FAILURE;
            }
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if key.is_empty() {
        eprintln!("the key is empty; give it as an argument or on standard input");
        return ExitCode::FAILURE;
    }
    println!("{}", portcullis::policy::consumer::hash_key(key.as_bytes()));
    ExitCode::SUCCESS
}

/// Reads the password as one line of standard input (never an argument,
/// which would land in the shell's history and in `ps`). At a terminal it
/// prompts on standard error; the typing is echoed, since turning echo off
/// would take another crate: pipe the password in where that matters.
fn hash_password(bcrypt: bool) -> ExitCode {
    use portcullis::policy::basic_auth::{HashFormat, hash_password};
    use std::io::{IsTerminal, Write};
    if std::io::stdin().is_terminal() {
        eprint!("Password (shown as you type): ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("cannot read the password from standard input: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    let format = if bcrypt {
        HashFormat::Bcrypt
    } else {
        HashFormat::Argon2id
    };
    match hash_password(password.as_bytes(), format) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis hash-password: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    // rustls warns about what a client's hello gets wrong (an IP address as
    // SNI, as every client of https://10.0.0.1/ sends): a line per
    // connection that clients decide. Failed handshakes are logged by the
    // gateway itself (debug). Likewise the h2 crate warns for every PING ACK
    // a client sends unasked, which it then ignores (RFC 9113 §6.7): a flood
    // of them must not become a flood of log lines.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
    let filter = match "h2::proto::ping_pong=error".parse() {
        Ok(quiet) => filter.add_directive(quiet),
        Err(_) => filter,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Task polls between two looks for new I/O events while tasks are queued
/// (tokio's default is 61). A request's poll is short (about 10 µs), so a
/// busy worker finishes the batch it has before fetching the next one rather
/// than breaking into it every 61 polls, which lowered wrk's p99 at 64
/// keep-alive connections by about 8% (1.80-1.87 to 1.63-1.75 ms) at the same
/// throughput; new events wait at most about 128 x 10 µs behind a full queue.
const EVENT_INTERVAL: u32 = 128;

fn with_runtime(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .event_interval(EVENT_INTERVAL)
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("portcullis: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn check(config: PathBuf) -> ExitCode {
    match Runtime::check(config.clone()).await {
        Ok(rt) => {
            let s = rt.snapshot.load();
            println!(
                "{}: ok ({} listeners, {} routes, {} upstreams)",
                config.display(),
                s.listeners.len(),
                s.routes.len(),
                s.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{} error{} in {}",
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" },
                config.display()
            );
            ExitCode::FAILURE
        }
    }
}

async fn run(config: PathBuf) -> ExitCode {
    let gateway = match portcullis::gateway::start(config).await {
        Ok(g) => g,
        Err(StartError::Config(errors)) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("portcullis: {e}");
            return ExitCode::FAILURE;
        }
    };
    portcullis::server::serve_until_signal(gateway).await
}
