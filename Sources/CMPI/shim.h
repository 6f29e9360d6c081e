// Open MPI's C API, for its types only: Strata opens libmpi with dlopen at run time
// (MPIWorld.swift), so the strata binary starts on machines without MPI (a GPU box, a laptop)
// and only `strata cluster run` needs it. Debian's multiarch include directory holds the
// `mpi` alternative (libopenmpi-dev).
#if __has_include(<mpi/mpi.h>)
#include <mpi/mpi.h>
#else
#include <mpi.h>
#endif

// The function types Strata looks up with dlsym, named after the functions they hold.
typedef __typeof__(&MPI_Init_thread) strata_mpi_init_thread;
typedef __typeof__(&MPI_Initialized) strata_mpi_initialized;
typedef __typeof__(&MPI_Finalize) strata_mpi_finalize;
typedef __typeof__(&MPI_Comm_rank) strata_mpi_comm_rank;
typedef __typeof__(&MPI_Comm_size) strata_mpi_comm_size;
typedef __typeof__(&MPI_Isend) strata_mpi_isend;
typedef __typeof__(&MPI_Irecv) strata_mpi_irecv;
typedef __typeof__(&MPI_Probe) strata_mpi_probe;
typedef __typeof__(&MPI_Iprobe) strata_mpi_iprobe;
typedef __typeof__(&MPI_Get_count) strata_mpi_get_count;
typedef __typeof__(&MPI_Recv) strata_mpi_recv;
typedef __typeof__(&MPI_Wait) strata_mpi_wait;
typedef __typeof__(&MPI_Test) strata_mpi_test;
typedef __typeof__(&MPI_Abort) strata_mpi_abort;
typedef __typeof__(&MPI_Barrier) strata_mpi_barrier;
typedef __typeof__(&MPI_Comm_set_errhandler) strata_mpi_comm_set_errhandler;
typedef __typeof__(&MPI_Error_string) strata_mpi_error_string;
