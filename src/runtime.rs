//! Launch facts of this process: how many processes an MPI launcher started, which one this
//! is, and whether it is the one that prints and writes (rank 0). Recorded once when MPI starts
//! ([`crate::backend::mpi::Launch::start`]); without MPI, or when not launched by an MPI
//! launcher, there is one rank. Kept apart from the MPI backend so that the modules that only
//! ask these questions (progress, the learner's checks) need not import it.

use std::sync::OnceLock;

/// Rank and size of the MPI world.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct World {
    /// This process's rank, 0 .. size.
    pub rank: usize,
    /// Number of ranks.
    pub size: usize,
}

static WORLD: OnceLock<World> = OnceLock::new();

/// The MPI world, once MPI has started; None without it.
pub fn world() -> Option<World> {
    WORLD.get().copied()
}

/// Records the world when MPI starts (once; later calls change nothing).
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn set_world(world: World) {
    let _ = WORLD.set(world);
}

/// Number of ranks P (1 without MPI).
pub fn ranks() -> usize {
    world().map_or(1, |w| w.size)
}

/// This process's rank (0 without MPI).
pub fn rank() -> usize {
    world().map_or(0, |w| w.rank)
}

/// Whether this rank prints and writes outputs: rank 0, or the only process.
pub fn is_root() -> bool {
    rank() == 0
}

/// This process's index among the ranks on its own machine, as the launcher says (Open MPI,
/// MPICH, Slurm), for choosing one of several GPUs per node; 0 when not launched by one.
pub fn local_rank() -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
    .unwrap_or(0)
}

/// Environment variables by which MPI launchers (Open MPI's mpirun, MPICH's Hydra, PMI) tell
/// a process it is one of several.
const LAUNCHER_SIZE_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MPI_LOCALNRANKS"];

/// The number of processes a launcher started, when this one was started by one (before MPI
/// starts, and in a build without MPI).
pub fn launched_size() -> Option<usize> {
    LAUNCHER_SIZE_VARS
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

#[cfg(test)]
mod tests {
    /// Not launched by an MPI launcher (the unit tests never are): one rank, and it is root.
    #[test]
    fn without_mpi_there_is_one_rank_and_it_prints() {
        if super::launched_size().is_some() {
            return;
        }
        assert_eq!(super::world(), None);
        assert_eq!((super::ranks(), super::rank()), (1, 0));
        assert!(super::is_root());
    }
}
