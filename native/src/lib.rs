//! The `flowmapsr` command line as a library (so integration tests can drive it in-process).

pub mod adversarial;
pub mod backend;
pub mod bench;
pub mod eval;
pub mod imageio;
pub mod pipeline;
pub mod serve;
pub mod train;
pub mod upscale;
pub mod weights;

#[derive(clap::Parser, Debug)]
#[command(
    name = "flowmapsr",
    version,
    about = "Flow-map image super-resolution (FlowMapSR): one network call per tile"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Train a model (resumable).
    Train(train::TrainArgs),
    /// Upscale images with the shipped (or given) weights.
    Upscale(upscale::UpscaleArgs),
    /// Score a method on a folder of HR images (standard SR protocol).
    Eval(eval::EvalArgs),
    /// Inference speed on one tile.
    Bench(bench::BenchArgs),
    /// HTTP upscaling service (and the web demo when built).
    Serve(serve::ServeArgs),
    /// Export weights to safetensors.
    Export(ExportArgs),
    /// Blend two weights folders (the faithful/realistic dial, ESRGAN's network interpolation).
    Interpolate(weights::InterpolateArgs),
    /// A whole-network adversarial run's latest checkpoint as a compact run folder (the
    /// generator in f16, no generator optimiser) that `train --resume` continues elsewhere.
    Pack(adversarial::pack::PackArgs),
    /// Coordinator of a multi-node training run: start one, then `train --nodes N ...` on every
    /// node (docs/distributed.md).
    Orchestrator(OrchestratorArgs),
}

#[derive(clap::Args, Debug)]
pub struct OrchestratorArgs {
    /// WebSocket port the nodes connect to (`train --orchestrator ws://HOST:PORT`).
    #[arg(long, default_value_t = 3000)]
    pub port: u16,
}

/// Runs burn-collective's global orchestrator until Ctrl-C / SIGTERM.
fn orchestrator(a: &OrchestratorArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    println!("orchestrator on ws://0.0.0.0:{}", a.port);
    rt.block_on(burn_collective::start_global_orchestrator(a.port));
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Weights folder (default: the shipped weights).
    #[arg(long)]
    pub weights: Option<std::path::PathBuf>,
    /// `safetensors`: one .safetensors file (the network). `f16`, `f32`: a weights folder
    /// (config.json + model.bin [+ lora.json + lora.bin]) with every parameter in that precision,
    /// loadable wherever `--weights` is (the shipped weights are f16: half the bytes).
    #[arg(long, value_enum, default_value_t = weights::ExportFormat::Safetensors)]
    pub format: weights::ExportFormat,
    /// Output: a .safetensors file, or a folder for `--format f16|f32`.
    #[arg(short, long)]
    pub output: std::path::PathBuf,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(a) => train::run(&a),
        Command::Upscale(a) => upscale::run(&a),
        Command::Eval(a) => eval::run(&a),
        Command::Bench(a) => bench::run(&a),
        Command::Serve(a) => serve::run(&a),
        Command::Orchestrator(a) => orchestrator(&a),
        Command::Interpolate(a) => weights::interpolate(&a),
        Command::Export(a) => weights::export(&a),
        Command::Pack(a) => adversarial::pack::pack(&a),
    }
}
