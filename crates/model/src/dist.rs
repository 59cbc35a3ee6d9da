//! Data-parallel ranks: the [`Comm`] a trainer talks to (rank, world size, sums, broadcasts), with
//! [`Local`] for one process and, behind the `mpi` feature, [`mpi_world::MpiComm`] over a system MPI
//! (`mpirun -np N kiln train ...`). The trainer is written once against [`Comm`].
//!
//! Every sum over ranks is taken **in rank order**, `((x0 + x1) + x2) + ...`, the order in which one
//! process accumulating the same micro-batches adds their gradients, so `N` ranks with one
//! micro-batch each give the bits of one process with `--accum N` (docs/DISTRIBUTED.md).
use crate::optim::{AdamW, OptimState, Optimizer};
use crate::params::Param;
use kiln_tensor::{no_grad, DType, Error, Result, Tensor};

/// A group of ranks that train one model together. Collectives must be called by every rank in
/// the same order; errors a rank cannot recover from end the whole job ([`Comm::abort`]).
pub trait Comm {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Element-wise sum over ranks in rank order (`((x0 + x1) + x2) + ...`), on every rank.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// As [`Comm::all_reduce_sum_f32`], in f64.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Rank `root`'s `buf` on every rank (the lengths must agree).
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()>;
    fn broadcast_f64(&self, buf: &mut [f64], root: usize) -> Result<()>;
    /// Rank `root`'s bytes on every rank (any length).
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()>;
    fn barrier(&self) -> Result<()>;
    /// Prints `msg` and ends every rank of the job (MPI_Abort), so that no rank waits forever on
    /// one that failed.
    fn abort(&self, msg: &str) -> !;
    /// "rank R of N" (for messages).
    fn describe(&self) -> String {
        format!("rank {} of {}", self.rank(), self.size())
    }
}

/// One process alone: rank 0 of 1; every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl Comm for Local {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum_f32(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_f32(&self, _buf: &mut [f32], root: usize) -> Result<()> {
        check_root(root, 1)
    }
    fn broadcast_f64(&self, _buf: &mut [f64], root: usize) -> Result<()> {
        check_root(root, 1)
    }
    fn broadcast_bytes(&self, _buf: &mut Vec<u8>, root: usize) -> Result<()> {
        check_root(root, 1)
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, msg: &str) -> ! {
        eprintln!("{msg}");
        std::process::exit(1)
    }
}

fn check_root(root: usize, size: usize) -> Result<()> {
    if root >= size {
        return Err(Error::msg(format!("dist: root rank {root} outside a world of {size}")));
    }
    Ok(())
}

/// Whether this process was started by an MPI launcher (mpirun / mpiexec of OpenMPI or MPICH,
/// Slurm's srun), so that it should join an MPI world instead of running alone.
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"].iter().any(|v| std::env::var_os(v).is_some())
}

/// The world this process belongs to: an MPI world when an MPI launcher started it (and kiln was
/// built with the `mpi` feature), else [`Local`]. Started under a launcher without the feature
/// is an error rather than N independent runs writing the same directory.
pub fn world() -> Result<Box<dyn Comm>> {
    if !launched_by_mpi() {
        return Ok(Box::new(Local));
    }
    #[cfg(feature = "mpi")]
    {
        mpi_world::MpiComm::init().map(|c| Box::new(c) as Box<dyn Comm>)
    }
    #[cfg(not(feature = "mpi"))]
    {
        Err(Error::msg("started by an MPI launcher, but this kiln was built without the `mpi` feature: rebuild with --features mpi, or run it alone"))
    }
}

/// Sums the gradients of `params` over ranks in rank order, with `stats` (per-rank counters such
/// as the loss sum) summed the same way. A parameter without a gradient on a rank counts as zeros
/// there; it gets a gradient where any rank had one. Gradients are summed as f32 on the host in one
/// buffer (one all-reduce after the backward, not buckets overlapping it).
pub fn all_reduce_grads(comm: &dyn Comm, params: &[Param], stats: &mut [f64]) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let ns = stats.len();
    let mut head: Vec<f64> = stats.iter().copied().chain(params.iter().map(|p| p.grad().is_some() as u8 as f64)).collect();
    comm.all_reduce_sum_f64(&mut head)?;
    stats.copy_from_slice(&head[..ns]);
    let has: Vec<bool> = head[ns..].iter().map(|&c| c > 0.0).collect();
    let mut flat: Vec<f32> = Vec::new();
    for (p, &h) in params.iter().zip(&has) {
        if !h {
            continue;
        }
        match p.grad() {
            Some(g) => flat.extend(g.to_dtype(DType::F32)?.to_device(kiln_tensor::Device::Cpu)?.to_vec::<f32>()?),
            None => flat.resize(flat.len() + p.tensor().elem_count(), 0.0),
        }
    }
    comm.all_reduce_sum_f32(&mut flat)?;
    let mut off = 0;
    no_grad(|| -> Result<()> {
        for (p, &h) in params.iter().zip(&has) {
            if !h {
                continue;
            }
            let t = p.tensor();
            let n = t.elem_count();
            let g = Tensor::from_vec(flat[off..off + n].to_vec(), t.shape())?;
            off += n;
            let dtype = p.grad().map(|g| g.dtype()).unwrap_or(t.dtype());
            p.set_grad(Some(g.to_dtype(dtype)?.to_device(t.device())?));
        }
        Ok(())
    })
}

/// Rank `root`'s values of `params` on every rank (weights that must start equal).
pub fn broadcast_params(comm: &dyn Comm, params: &[Param], root: usize) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    for p in params {
        broadcast_param(comm, p, root)?;
    }
    Ok(())
}

fn broadcast_param(comm: &dyn Comm, p: &Param, root: usize) -> Result<()> {
    let t = p.tensor();
    let mut v = if comm.rank() == root { t.to_dtype(DType::F32)?.to_device(kiln_tensor::Device::Cpu)?.to_vec::<f32>()? } else { vec![0.0; t.elem_count()] };
    comm.broadcast_f32(&mut v, root)?;
    if comm.rank() != root {
        let upd = Tensor::from_vec(v, t.shape())?.to_dtype(t.dtype())?.to_device(t.device())?;
        no_grad(|| t.assign(&upd))?;
    }
    Ok(())
}

/// ZeRO-1's partition: the rank that keeps the optimizer state of, and updates, each of `params`
/// (whole parameters, the largest first to the least loaded rank; ties to the lower rank), the same
/// on every rank. Whole tensors keep each element's update on the same code path (SIMD body or
/// tail) as an unsharded step, so the bits agree.
pub fn zero_owners(params: &[Param], size: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..params.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(params[i].tensor().elem_count()));
    let mut load = vec![0usize; size.max(1)];
    let mut owner = vec![0usize; params.len()];
    for i in order {
        let r = (0..load.len()).min_by_key(|&r| (load[r], r)).unwrap_or(0);
        load[r] += params[i].tensor().elem_count();
        owner[i] = r;
    }
    owner
}

/// After each rank updated the parameters it owns ([`zero_owners`]): every parameter from its
/// owner on every rank (an all-gather, as one broadcast per parameter).
pub fn gather_params(comm: &dyn Comm, params: &[Param], owners: &[usize]) -> Result<()> {
    for (p, &o) in params.iter().zip(owners) {
        broadcast_param(comm, p, o)?;
    }
    Ok(())
}

/// ZeRO-1's whole optimizer state, for a checkpoint: each parameter's moments sent from the rank
/// that keeps them ([`zero_owners`]); every rank must call it. Rank 0 gets the full state (what an
/// unsharded run saves, so any world size can resume it); other ranks get their own shard's.
pub fn gather_optimizer(comm: &dyn Comm, opt: &AdamW, params: &[Param]) -> Result<OptimState> {
    let owners = zero_owners(params, comm.size());
    let mut full = AdamW::new(*opt.config());
    for (p, &o) in params.iter().zip(&owners) {
        let mine = if comm.rank() == o { opt.moments(p.name())? } else { None };
        let mut head = [mine.is_some() as u8 as f64, mine.as_ref().map_or(0.0, |m| m.0 as f64)];
        comm.broadcast_f64(&mut head, o)?;
        if head[0] == 0.0 {
            continue;
        }
        let n = p.tensor().elem_count();
        let (mut m, mut v) = match mine {
            Some((_, m, v)) => (m, v),
            None => (vec![0.0; n], vec![0.0; n]),
        };
        comm.broadcast_f32(&mut m, o)?;
        comm.broadcast_f32(&mut v, o)?;
        if comm.rank() == 0 {
            full.set_moments(p.name(), head[1] as u64, m, v)?;
        }
    }
    if comm.rank() == 0 {
        full.state()
    } else {
        opt.state()
    }
}

/// Refuses to resume a checkpoint (its training state's `dist` record, absent in checkpoints
/// written outside [`crate::trainer::Trainer::run_dist`]) with another split of the update:
/// `world` ranks × `accum` micro-batches must be the checkpoint's, and the world size its own
/// unless `accum` re-splits the same micro-batches (2 ranks × 1 resumed as 1 × 2 is the same run).
pub fn check_resume(st: &crate::train_state::TrainState, world: usize, accum: usize) -> Result<()> {
    let Some(d) = st.extra.get("dist").filter(|d| !d.is_null()) else { return Ok(()) };
    let get = |k: &str| d.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
    let (Some(w), Some(a)) = (get("world_size"), get("accum")) else { return Ok(()) };
    if w != world && w * a != world * accum {
        return Err(Error::msg(format!(
            "train: the checkpoint was trained by {w} rank(s) × --accum {a} ({} micro-batches per update), this run has {world} rank(s) × --accum {accum}; resume with {w} ranks (mpirun -np {w}), or with an --accum that keeps {} micro-batches per update",
            w * a,
            w * a
        )));
    }
    Ok(())
}

/// A test hook: `KILN_TEST_RANK_FAULT=R@S` kills rank R (SIGKILL, as a crash) when it starts update
/// S (1-based); `R@S:error` makes it fail with an error instead.
pub fn test_fault(comm: &dyn Comm, step: u64) -> Result<()> {
    let Ok(spec) = std::env::var("KILN_TEST_RANK_FAULT") else { return Ok(()) };
    let (at, how) = spec.split_once(':').unwrap_or((spec.as_str(), "kill"));
    let Some((r, s)) = at.split_once('@') else { return Ok(()) };
    if r.parse::<usize>().ok() != Some(comm.rank()) || s.parse::<u64>().ok() != Some(step) {
        return Ok(());
    }
    if how == "error" {
        return Err(Error::msg(format!("KILN_TEST_RANK_FAULT: injected failure at step {step}")));
    }
    #[cfg(unix)]
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

#[cfg(feature = "mpi")]
pub mod mpi_world {
    //! [`MpiComm`]: the MPI world (rsmpi over the system's MPI library).
    use super::{check_root, Comm};
    use kiln_tensor::{Error, Result};
    use mpi::datatype::{Partition, PartitionMut};
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::traits::*;
    use mpi::Count;

    /// MPI_COMM_WORLD; MPI is finalized when this is dropped.
    pub struct MpiComm {
        world: SimpleCommunicator,
        rank: usize,
        size: usize,
        _universe: mpi::environment::Universe,
    }

    impl MpiComm {
        /// Initializes MPI (only the main thread calls it; rayon's threads compute).
        pub fn init() -> Result<MpiComm> {
            let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled).ok_or_else(|| Error::msg("dist: MPI was already initialized"))?;
            let world = universe.world();
            let (rank, size) = (world.rank() as usize, world.size() as usize);
            // a panic on one rank ends the job rather than leaving the others in a collective
            let prev = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                prev(info);
                eprintln!("kiln: rank {rank} of {size} panicked; aborting every rank");
                SimpleCommunicator::world().abort(101);
            }));
            Ok(MpiComm { world, rank, size, _universe: universe })
        }

        /// The in-rank-order sum: an all-to-all sends chunk c of every rank's buffer to rank c,
        /// which adds the N pieces in rank order; an all-gather returns the summed chunks.
        fn ordered_sum<T: Equivalence + Copy + Default + std::ops::Add<Output = T>>(&self, buf: &mut [T]) -> Result<()> {
            let (n, len) = (self.size, buf.len());
            if n == 1 || len == 0 {
                return Ok(());
            }
            let bounds: Vec<usize> = (0..=n).map(|c| (len as u128 * c as u128 / n as u128) as usize).collect();
            let count = |x: usize| Count::try_from(x).map_err(|_| Error::msg(format!("dist: a buffer of {len} elements is too large for MPI counts")));
            let counts: Vec<Count> = (0..n).map(|c| count(bounds[c + 1] - bounds[c])).collect::<Result<_>>()?;
            let displs: Vec<Count> = bounds[..n].iter().map(|&b| count(b)).collect::<Result<_>>()?;
            let k = bounds[self.rank + 1] - bounds[self.rank];
            let mut recv = vec![T::default(); n * k];
            {
                let rc: Vec<Count> = vec![count(k)?; n];
                let rd: Vec<Count> = (0..n).map(|i| count(i * k)).collect::<Result<_>>()?;
                let send = Partition::new(&*buf, &counts[..], &displs[..]);
                let mut rp = PartitionMut::new(&mut recv[..], &rc[..], &rd[..]);
                self.world.all_to_all_varcount_into(&send, &mut rp);
            }
            let mut acc: Vec<T> = recv[..k].to_vec();
            for i in 1..n {
                for (a, &x) in acc.iter_mut().zip(&recv[i * k..(i + 1) * k]) {
                    *a = *a + x;
                }
            }
            let mut out = PartitionMut::new(buf, &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(&acc[..], &mut out);
            Ok(())
        }

        fn bcast<T: Equivalence>(&self, buf: &mut [T], root: usize) -> Result<()> {
            check_root(root, self.size)?;
            self.world.process_at_rank(root as i32).broadcast_into(buf);
            Ok(())
        }
    }

    impl Comm for MpiComm {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
            self.ordered_sum(buf)
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            self.ordered_sum(buf)
        }
        fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
            self.bcast(buf, root)
        }
        fn broadcast_f64(&self, buf: &mut [f64], root: usize) -> Result<()> {
            self.bcast(buf, root)
        }
        fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
            let mut len = [buf.len() as u64];
            self.bcast(&mut len[..], root)?;
            buf.resize(len[0] as usize, 0);
            self.bcast(&mut buf[..], root)
        }
        fn barrier(&self) -> Result<()> {
            self.world.barrier();
            Ok(())
        }
        fn abort(&self, msg: &str) -> ! {
            eprintln!("{msg}");
            self.world.abort(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{Init, ParamStore};
    use kiln_tensor::Device;

    #[test]
    fn zero_owners_balance_whole_parameters() {
        let store = ParamStore::new(0, DType::F32, Device::Cpu);
        for (name, n) in [("a", 100), ("b", 60), ("c", 50), ("d", 10)] {
            store.get_or_init(name, &[n], Init::Zeros).unwrap();
        }
        let params = store.trainable();
        let owners = zero_owners(&params, 2);
        let load = |r: usize| params.iter().zip(&owners).filter(|(_, &o)| o == r).map(|(p, _)| p.tensor().elem_count()).sum::<usize>();
        // 100 -> 0, 60 -> 1, 50 -> 1 (60 < 100), 10 -> 0 (100 < 110): loads 110 and 110
        assert_eq!((load(0), load(1)), (110, 110));
        assert_eq!(owners, vec![0, 1, 1, 0]);
        assert_eq!(zero_owners(&params, 1), vec![0; 4]);
    }

    #[test]
    fn local_world_is_rank_0_of_1() {
        let c = Local;
        assert_eq!((c.rank(), c.size()), (0, 1));
        let mut v = vec![1.5f32, -2.0];
        c.all_reduce_sum_f32(&mut v).unwrap();
        assert_eq!(v, [1.5, -2.0]);
        assert!(c.broadcast_f32(&mut v, 1).is_err());
    }
}
