//! Write freshly initialised weights (the identity flow map, i.e. bicubic) for a preset:
//! `init_weights DIR [small|tiny]`. Used to bootstrap a weights folder before training.

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: init_weights DIR [small|tiny]"));
    let unet = match args.next().as_deref() {
        Some("tiny") => flowmapsr_core::unet::UNetConfig::tiny(),
        _ => flowmapsr_core::unet::UNetConfig::small(),
    };
    let cfg = flowmapsr_core::weights::ModelConfig::new(
        unet,
        flowmapsr_core::bridge::BridgeConfig::new(),
    )
    .with_notes("untrained (identity flow map = bicubic)".into());
    let net = cfg
        .unet
        .init::<burn::backend::Flex>(&burn::backend::flex::FlexDevice);
    flowmapsr_core::weights::save_dir(&net, &cfg, &dir).expect("writing weights");
}
