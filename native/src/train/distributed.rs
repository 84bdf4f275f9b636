//! Data-parallel training: where this process sits among the run's devices and nodes, and the
//! one all-reduce per step that averages gradients and loss (burn-collective).

use super::NodeArgs;
use anyhow::{bail, Result};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};
use flowmapsr_core::objectives::weighting::LossWeight;

/// Where this process sits in a data-parallel run.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Devices in the whole run (all nodes).
    pub world: usize,
    /// Global rank of this process's first device.
    pub first_rank: usize,
    /// burn-collective's config, when world > 1.
    pub collective: Option<CollectiveConfig>,
}

impl Topology {
    pub fn new(node: &NodeArgs, local: usize, batch: usize) -> Result<Self> {
        if node.nodes == 0 || node.node_rank >= node.nodes {
            bail!(
                "--node-rank {} must be below --nodes {}",
                node.node_rank,
                node.nodes
            );
        }
        let world = local * node.nodes as usize;
        if !batch.is_multiple_of(world) {
            bail!("batch {batch} must be divisible by the number of devices in the run ({world})");
        }
        let mut collective = None;
        if world > 1 {
            let mut c = CollectiveConfig::default().with_num_devices(local);
            if node.nodes > 1 {
                let (Some(o), Some(a), Some(p)) =
                    (&node.orchestrator, &node.node_address, node.data_port)
                else {
                    bail!("--nodes > 1 needs --orchestrator, --node-address and --data-port");
                };
                let addr = |s: &str| {
                    s.parse::<burn_communication::Address>()
                        .map_err(|e| anyhow::anyhow!("bad address '{s}': {e}"))
                };
                c = c
                    .with_num_nodes(node.nodes)
                    .with_global_address(addr(o)?)
                    .with_node_address(addr(a)?)
                    .with_data_service_port(p);
            }
            collective = Some(c);
        }
        Ok(Self {
            world,
            first_rank: node.node_rank as usize * local,
            collective,
        })
    }
}

/// Averages the gradients (of the model (a generator or a discriminator), then of the loss-weight net if any) and the loss over
/// every replica of the run with one burn-collective all-reduce of one flat vector (parameters in
/// module order, then the loss): one exchange per step, and every replica stops together if the
/// loss is not finite.
pub fn all_reduce_mean<B: AutodiffBackend>(
    model: &impl Module<B>,
    grads: &mut GradientsParams,
    mut weight: Option<(&LossWeight<B>, &mut GradientsParams)>,
    loss: Tensor<B::InnerBackend, 1>,
    peer: PeerId,
) -> Result<Tensor<B::InnerBackend, 1>> {
    struct Take<'a, I: burn::tensor::backend::Backend>(&'a mut GradientsParams, Vec<Tensor<I, 1>>);
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for Take<'_, B::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<B, D>>) {
            let g = self.0.remove::<B::InnerBackend, D>(p.id);
            let g = g.unwrap_or_else(|| Tensor::<B, D>::zeros(p.shape(), &p.device()).inner());
            self.1.push(g.flatten(0, D - 1));
        }
    }
    struct Put<'a, I: burn::tensor::backend::Backend>(&'a mut GradientsParams, Tensor<I, 1>, usize);
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for Put<'_, B::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<B, D>>) {
            let shape = p.shape();
            let n = shape.num_elements();
            let g = self.1.clone().narrow(0, self.2, n).reshape(shape);
            self.0.register::<B::InnerBackend, D>(p.id, g);
            self.2 += n;
        }
    }
    let mut take = Take(grads, Vec::new());
    model.visit(&mut take);
    let mut parts = take.1;
    if let Some((w, g)) = weight.as_mut() {
        let mut take = Take(g, Vec::new());
        w.visit(&mut take);
        parts.extend(take.1);
    }
    let n: usize = parts.iter().map(|t| t.dims()[0]).sum();
    parts.push(loss);
    let flat = Tensor::cat(parts, 0);
    let flat: Tensor<B::InnerBackend, 1> =
        Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(
            burn_collective::all_reduce::<B::InnerBackend>(
                peer,
                flat.into_primitive().tensor(),
                ReduceOperation::Mean,
            )
            .map_err(|e| anyhow::anyhow!("gradient all-reduce: {e:?}"))?,
        ));
    let loss = flat.clone().narrow(0, n, 1);
    let mut put = Put(grads, flat, 0);
    model.visit(&mut put);
    let (flat, at) = (put.1, put.2);
    if let Some((w, g)) = weight {
        w.visit(&mut Put(g, flat, at));
    }
    Ok(loss)
}

/// The run's result once every replica's thread has ended: the lead's (rank 0, run on the
/// calling thread), or else the first error among the others.
pub fn join_workers(
    lead: Result<()>,
    others: Vec<std::thread::ScopedJoinHandle<'_, Result<()>>>,
) -> Result<()> {
    let mut result = lead;
    for h in others {
        let r = h
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("a training worker panicked")));
        if result.is_ok() {
            result = r;
        }
    }
    result
}
