/* The one list of instruction sets and of the files compiled once per set. setup.py reads it (each
 * FC_ISA line, and every quoted .c path) to know what to compile with which flags; dispatch.c and
 * dispatch.h expand it (X-macros) into the kernel table, its declarations and its accessors. Included
 * more than once on purpose: no include guard.
 *
 * FC_ISA(name, gemm, flags), worst first (dispatch.c picks the last one the CPU and OS run): its GEMM
 *   micro-kernel csrc/gemm/ukr_<gemm>.c (defining fc_gemm_<gemm>), its FMA peak loop
 *   csrc/bench/peak_<name>.c (fc_fma_peak_<name>), and every per-set file below, compiled with `flags`.
 *   The first set is the portable one, compiled with the baseline flags of every other file. A new set
 *   also needs its CPU check in dispatch.c (cpu_supports); fastconv.ISAS follows this list.
 * FC_PER_ISA_TABLES(X, isa): one X(isa, type, table, file) per file compiled once per set whose compile
 *   defines the kernel table `const type fc_<table>_<isa>` (named after its set by the #if chain at the
 *   top of the file); dispatch.c's fc_active_<table>() returns the call's. Its type comes from the header
 *   dispatch.h includes.
 * FC_PER_ISA_CODE(X): files compiled once per set that define no table (their functions are reached
 *   through a micro-kernel's description).
 * FC_BF16_GEMM(isa, gemm, flags): the bfloat16 GEMM micro-kernel csrc/gemm/ukr_<gemm>.c (defining
 *   fc_gemm_<gemm>) that calls of a bfloat16 compute dtype run under instruction set `isa` where the CPU
 *   has the feature its flags name (dispatch.c's cpu_supports_bf16); compiled alone with `flags`.
 *   Elsewhere those calls run the set's float32 kernel, or the portable bf16 kernel when forced. */

#ifndef FC_ISA
#define FC_ISA(name, gemm, flags)
#endif

FC_ISA(generic, generic_4x16, "")
#if defined(__x86_64__) || defined(_M_X64)
FC_ISA(avx2, avx2_6x16, "-mavx2 -mfma")
FC_ISA(avx512, avx512_14x32, "-mavx512f -mavx2 -mfma")
#endif

#undef FC_ISA

#ifndef FC_BF16_GEMM
#define FC_BF16_GEMM(isa, gemm, flags)
#endif

#if defined(__x86_64__) || defined(_M_X64)
FC_BF16_GEMM(avx512, avx512_bf16_14x32, "-mavx512f -mavx512bf16 -mavx2 -mfma")
#endif

#undef FC_BF16_GEMM

#ifndef FC_PER_ISA_TABLES
#define FC_PER_ISA_TABLES(X, isa)                                              \
    X(isa, fc_conv_direct_kernels, conv_direct, "csrc/conv/direct.c")          \
    X(isa, fc_elementwise_kernels, elementwise, "csrc/train/elementwise.c")    \
    X(isa, fc_maxpool2x2_kernels, maxpool2x2, "csrc/pool/maxpool2x2.c")        \
    X(isa, fc_batchnorm_kernels, batchnorm, "csrc/norm/batchnorm.c")
#define FC_PER_ISA_CODE(X) X("csrc/gemm/pack.c")
#endif
