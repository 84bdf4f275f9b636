use clap::Parser;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,cubecl=warn,wgpu=warn,burn=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = flowmapsr_cli::Cli::parse();
    match flowmapsr_cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
