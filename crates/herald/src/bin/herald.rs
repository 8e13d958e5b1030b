//! The `herald` command: `serve`, `publish`, `token`, `config`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald::Config;
use herald::config::LogFormat;

/// The crate version and the git revision it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("HERALD_GIT_REVISION"),
    ")"
);

#[derive(Parser, Debug)]
#[command(
    name = "herald",
    version = VERSION,
    about = "A real-time push server: WebSocket groups, an HTTP publish API, resumable streams",
    long_about = "A real-time push server. Browsers connect over WebSocket to a route such as \
/message/{user_id}/stream/ and join the groups it names (user.{user_id}); backends publish \
to groups over HTTP (POST /api/publish) or with `herald publish`; every member connection \
receives each message as one frame.\n\nWith no configuration, `herald serve` listens on \
127.0.0.1:8000 with the memory layer and the route /message/{user_id}/stream/ → user.{user_id}."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server until SIGINT/SIGTERM, then drain.
    Serve {
        /// TOML configuration file (every key also settable as HERALD_<SECTION>_<KEY>).
        #[arg(long, short, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on (overrides `listen`); port 0 picks a free port.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Publish one message to a group through a running server; prints the offset.
    Publish {
        /// Base URL of the server.
        #[arg(long, env = "HERALD_SERVER", default_value = "http://127.0.0.1:8000")]
        server: String,
        /// API key, if the server requires one.
        #[arg(long, env = "HERALD_API_KEY")]
        api_key: Option<String>,
        /// Send the payload as a binary frame instead of text.
        #[arg(long)]
        binary: bool,
        /// Also send it into the Django Channels group (needs `[django] enabled`).
        #[arg(long)]
        django: bool,
        /// The group, e.g. user.42.
        group: String,
        /// The payload; read from standard input when omitted.
        payload: Option<String>,
    },
    /// Check or print configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Mint a connection token (HS256 JWT) for routes with `auth = "token"`; prints it.
    Token {
        /// The subject: the user the token speaks for (e.g. the `{user_id}` of the route).
        #[arg(long)]
        sub: String,
        /// Limit the token to these groups, comma-separated: names or `prefix.*` patterns.
        /// Without it, the token opens the routes whose groups its `sub` yields.
        #[arg(long, value_delimiter = ',')]
        groups: Option<Vec<String>>,
        /// How long the token is valid, e.g. 15m, 1h, 7d; at most 366 days.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Configuration file whose first `[auth]` secret signs the token.
        #[arg(long, short, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
        /// The secret to sign with (overrides the configuration).
        #[arg(long, env = "HERALD_AUTH_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate the configuration (file, then HERALD_* variables) as `serve` would and
    /// print the effective configuration, secrets redacted; exit 2 if it is invalid.
    Check {
        /// TOML configuration file.
        #[arg(long, short, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print a configuration file with every key at its default, commented.
    Default,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !matches!(cli.command, Command::Serve { .. }) {
        init_tracing(LogFormat::Text);
    }
    match cli.command {
        Command::Serve { config, listen } => runtime.block_on(serve(config, listen)),
        Command::Token {
            sub,
            groups,
            ttl,
            config,
            secret,
        } => token(&sub, groups, ttl, config, secret),
        Command::Config(ConfigCommand::Default) => {
            print!("{}", herald::config::DEFAULT_CONFIG_TOML);
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCommand::Check { config }) => config_check(config),
        Command::Publish {
            server,
            api_key,
            binary,

            django,
            group,
            payload,
        } => runtime.block_on(publish(server, api_key, binary, django, group, payload)),
    }
}

/// Logs to stderr: text (coloured only on a terminal, and never with `NO_COLOR` set) or
/// one JSON object per line for log pipelines (`[log] format = "json"`).
fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("herald=info,warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(colour).init()
        }
    }
}

async fn serve(file: Option<PathBuf>, listen: Option<std::net::SocketAddr>) -> ExitCode {
    let mut config = match Config::load(file.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(listen) = listen {
        config.listen = listen;
    }
    init_tracing(config.log.format);
    raise_open_files_limit();
    let listener = match bind(config.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("herald: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("herald: cannot read the bound address: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The one line tools and tests read: the real address, port 0 resolved.
    let scheme = if config.tls.is_enabled() {
        "https"
    } else {
        "http"
    };
    println!("listening on {scheme}://{addr}");
    match herald::run(listener, config, herald::server::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::from(2)
        }
    }
}

async fn publish(
    server: String,
    api_key: Option<String>,
    binary: bool,
    django: bool,
    group: String,
    payload: Option<String>,
) -> ExitCode {
    let payload = match payload {
        Some(p) => p.into_bytes(),
        None => {
            let mut buf = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
                eprintln!("herald: cannot read the payload from stdin: {e}");
                return ExitCode::FAILURE;
            }
            buf
        }
    };
    match herald::cli::publish(
        &server,
        api_key.as_deref(),
        &group,
        &payload,
        binary,
        django,
    )
    .await
    {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Each WebSocket holds a file descriptor: raise the soft limit to the hard one, so the
/// node can hold as many connections as the machine allows, and say what it is.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

/// `herald config check`: what `serve` would load, or why it would refuse to start.
fn config_check(file: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(file.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    match config.to_redacted_toml() {
        Ok(text) => {
            print!("{text}");
            eprintln!("herald: configuration is valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::from(2)
        }
    }
}

/// `herald token`: signs with `--secret`, else with the configuration's first secret.
fn token(
    sub: &str,
    groups: Option<Vec<String>>,
    ttl: std::time::Duration,
    config: Option<PathBuf>,
    secret: Option<String>,
) -> ExitCode {
    let secret = match secret {
        Some(secret) => secret.into_bytes(),
        None => {
            let secrets = Config::load(config.as_deref(), std::env::vars())
                .and_then(|c| c.auth.load_secrets());
            match secrets {
                Ok(secrets) => secrets.into_iter().next().unwrap_or_default(),
                Err(e) => {
                    eprintln!("herald: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let groups = groups.map(|g| g.into_iter().map(|p| p.trim().to_string()).collect());
    match herald::auth::mint(&secret, sub, groups, ttl) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::from(2)
        }
    }
}

/// Pending connections the kernel queues before herald accepts them (capped by
/// `net.core.somaxconn`). Larger than tokio's 1024: after a restart every client
/// reconnects at once, and a full queue drops SYNs, which clients retry only after 1 s.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's own `bind` does: a restarted node can take its port back at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
