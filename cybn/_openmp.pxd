# Declarations of the OpenMP shim (_openmp_shim.h): OpenMP's functions when the build has
# OpenMP, serial stand-ins when it does not. Kernels cimport from here, never from openmp.

cdef extern from "_openmp_shim.h":
    int CYBN_OPENMP_ENABLED
    int omp_get_max_threads() noexcept nogil
    void omp_set_num_threads(int n) noexcept nogil
    int omp_get_num_procs() noexcept nogil
