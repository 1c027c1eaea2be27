/* OpenMP shim: the real runtime when the build has OpenMP, a serial stand-in otherwise. */
#ifndef CYBN_OPENMP_SHIM_H
#define CYBN_OPENMP_SHIM_H

#ifdef _OPENMP
#include <omp.h>
#define CYBN_OPENMP_ENABLED 1
#else
#define CYBN_OPENMP_ENABLED 0
static inline int omp_get_max_threads(void) { return 1; }
static inline void omp_set_num_threads(int n) { (void)n; }
static inline int omp_get_num_procs(void) { return 1; }
#endif

#endif
