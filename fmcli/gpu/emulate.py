"""Run the CUDA kernels on the CPU, slowly, to test them without a device.

The kernel source (fm_kernels.cu) is compiled by the host C++ compiler
together with a small SIMT emulation: every CUDA thread of a block is a
cooperative fiber (ucontext), lanes of a warp meet at each warp-synchronous
call (shuffles, votes, __syncwarp) and exchange values there, blocks run
one after another.  Scheduling is deterministic.  The emulation refuses
what would be undefined on a GPU: a warp-synchronous call that not every
lane of the warp reaches, partial masks, misaligned vector accesses, and
kernel arguments whose types do not match the launch's arrays and scalars.

:class:`EmulatedBackend` stands in for the CuPy backend
(fmcli.gpu.device.CupyBackend) with NumPy arrays as device memory, so
fmcli.gpu.state runs unchanged on it.  Linux or macOS, a C++17 compiler.

Rows in flight.  Blocks run one after another, so by default a warp's
writes land before the next block's warps read: per-row training is nearly
sequential, where a device keeps thousands of rows in flight and their
writes to a shared weight overwrite each other.  With rows_in_flight=N
(EmulatedBackend(rows_in_flight=N), or the environment variable
FMCLI_EMULATE_ROWS_IN_FLIGHT=N for backends made without the argument)
fm_train_rows takes the positions of a launch N at a time: each of the N
rows runs alone, from the parameters as they were before any of the N (a
snapshot), and then the elements each row changed are written back in row
order -- the last write wins, the others are lost, as with N warps that all
read before any writes.  Kernel arguments that are not B, L, F or R (the
accumulators of hot parameters, which the device adds to atomically, the
statistics) are shared as they are.  Each row compares the parameters
with the snapshot to find its writes: the mode is for small models.  Every
launch is counted per kernel (EmulatedBackend.launches).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter

import numpy as np

from .layout import kernel_names, load_source

EMULATION = r"""
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#include <setjmp.h>
#include <ucontext.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

using std::sqrt; using std::exp; using std::log; using std::log1p; using std::cos;
using std::pow; using std::floor; using std::fabs; using std::isfinite;

struct dim3 { unsigned x, y, z; };
struct float4 { float x, y, z, w; };
struct double2 { double x, y; };

namespace fmemu {

enum State { RUN, AT_WARP, AT_BLOCK, DONE };
const std::size_t STACK = 256 * 1024;

// A fiber is entered once through its ucontext (a stack of its own), then
// switched with _setjmp/_longjmp, which unlike swapcontext make no system
// call (the signal mask is never touched): a warp reduction is hundreds of
// switches.
struct Fiber { ucontext_t ctx; jmp_buf jb; State state; bool started; };

struct Run {
    unsigned grid = 0, block = 0, bid = 0, cur = 0;
    std::vector<Fiber> fibers;
    std::vector<unsigned long long> slots;
    std::vector<char*> stacks;
    ucontext_t sched;
    jmp_buf sched_jb;
    std::function<void()> body;
    const char* error = nullptr;
};

inline Run*& current() { static Run* r = nullptr; return r; }

inline void wait(State s) {
    Run* r = current();
    Fiber& f = r->fibers[r->cur];
    f.state = s;
    if (!_setjmp(f.jb)) _longjmp(r->sched_jb, 1);
}

inline void fail(const char* msg) {
    Run* r = current();
    if (!r->error) r->error = msg;
    r->fibers[r->cur].state = AT_BLOCK;
    _longjmp(r->sched_jb, 1);   // never resumed
}

inline void check_mask(unsigned mask) {
    if (mask != 0xffffffffu) fail("a partial warp mask (not emulated)");
}

inline void check_align(const void* p, std::size_t n) {
    if (reinterpret_cast<std::size_t>(p) % n) fail("a misaligned vector access");
}

inline unsigned lane_id() { return current()->cur & 31u; }
inline dim3 thread_idx() { return dim3{current()->cur, 0, 0}; }
inline dim3 block_idx() { return dim3{current()->bid, 0, 0}; }
inline dim3 block_dim() { return dim3{current()->block, 1, 1}; }
inline dim3 grid_dim() { return dim3{current()->grid, 1, 1}; }

template <typename V>
inline V exchange(V v, unsigned src_lane) {
    static_assert(sizeof(V) <= 8, "shuffle of a value wider than 8 bytes");
    Run* r = current();
    unsigned t = r->cur, base = t & ~31u;
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(V));
    r->slots[t] = bits;
    wait(AT_WARP);
    unsigned long long got = r->slots[base + (src_lane & 31u)];
    V out;
    std::memcpy(&out, &got, sizeof(V));
    wait(AT_WARP);
    return out;
}

inline unsigned ballot(int pred) {
    Run* r = current();
    unsigned t = r->cur, base = t & ~31u;
    r->slots[t] = pred != 0;
    wait(AT_WARP);
    unsigned bits = 0;
    for (unsigned i = 0; i < 32 && base + i < r->block; ++i)
        if (r->slots[base + i]) bits |= 1u << i;
    wait(AT_WARP);
    return bits;
}

extern "C" inline void fiber_entry() {
    Run* r = current();
    r->body();
    r->fibers[r->cur].state = DONE;
    _longjmp(r->sched_jb, 1);   // never returns: its stack is dropped
}

inline bool run_block(Run& r) {
    const unsigned n = r.block;
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = r.fibers[i];
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = r.stacks[i];
        f.ctx.uc_stack.ss_size = STACK;
        f.ctx.uc_link = &r.sched;
        makecontext(&f.ctx, (void (*)())fiber_entry, 0);
        f.state = RUN;
        f.started = false;
    }
    for (;;) {
        for (unsigned i = 0; i < n; ++i) {
            if (r.fibers[i].state != RUN) continue;
            r.cur = i;
            Fiber& f = r.fibers[i];
            if (!_setjmp(r.sched_jb)) {
                if (!f.started) {
                    f.started = true;
                    swapcontext(&r.sched, &f.ctx);
                } else {
                    _longjmp(f.jb, 1);
                }
            }
            if (r.error) return false;
        }
        bool released = false;
        for (unsigned lo = 0; lo < n; lo += 32) {
            unsigned hi = lo + 32 < n ? lo + 32 : n, at_warp = 0;
            for (unsigned i = lo; i < hi; ++i) at_warp += r.fibers[i].state == AT_WARP;
            if (!at_warp) continue;
            if (at_warp != hi - lo) {
                r.error = "a warp-synchronous call that not every lane of the warp reached";
                return false;
            }
            for (unsigned i = lo; i < hi; ++i) r.fibers[i].state = RUN;
            released = true;
        }
        if (released) continue;
        unsigned at_block = 0, done = 0;
        for (unsigned i = 0; i < n; ++i) {
            at_block += r.fibers[i].state == AT_BLOCK;
            done += r.fibers[i].state == DONE;
        }
        if (done == n) return true;
        if (at_block && at_block + done == n) {
            for (unsigned i = 0; i < n; ++i)
                if (r.fibers[i].state == AT_BLOCK) r.fibers[i].state = RUN;
            continue;
        }
        r.error = "deadlock";
        return false;
    }
}

template <typename... A, std::size_t... I>
inline std::tuple<A...> unpack(void** args, std::index_sequence<I...>) {
    return std::tuple<A...>(*static_cast<A*>(args[I])...);
}

template <typename... A>
inline int launch(void (*f)(A...), unsigned grid, unsigned block, void** args, char* err, int errlen) {
    std::tuple<A...> vals = unpack<A...>(args, std::index_sequence_for<A...>{});
    Run r;
    r.grid = grid;
    r.block = block;
    r.fibers.resize(block);
    r.slots.assign(block, 0);
    // fiber stacks are kept from launch to launch (per-row launches are many)
    static std::vector<char*> pool;
    while (pool.size() < block) pool.push_back(static_cast<char*>(std::malloc(STACK)));
    r.stacks.assign(pool.begin(), pool.begin() + block);
    r.body = [&]() { std::apply(f, vals); };
    Run* saved = current();
    current() = &r;
    bool ok = true;
    for (unsigned b = 0; b < grid && ok; ++b) {
        r.bid = b;
        ok = run_block(r);
    }
    current() = saved;
    if (!ok) {
        std::snprintf(err, errlen, "%s (block %u, thread %u)", r.error, r.bid, r.cur);
        return 1;
    }
    return 0;
}

template <typename A>
inline void describe(long long* o) {
    typedef typename std::remove_cv<typename std::remove_pointer<A>::type>::type P;
    o[0] = (long long)sizeof(A);
    o[1] = std::is_pointer<A>::value ? (long long)sizeof(P) : -1;
    o[2] = std::is_floating_point<P>::value ? 1 : 0;
}

template <typename... A>
inline int signature(void (*)(A...), long long* out, int cap) {
    int n = (int)sizeof...(A), i = 0;
    if (3 * n > cap) return -1;
    (void)std::initializer_list<int>{(describe<A>(out + 3 * i++), 0)...};
    return n;
}

}  // namespace fmemu

template <typename V> inline V __shfl_xor_sync(unsigned mask, V v, int lane_mask, int = 32) {
    fmemu::check_mask(mask);
    return fmemu::exchange(v, fmemu::lane_id() ^ (unsigned)lane_mask);
}
template <typename V> inline V __shfl_sync(unsigned mask, V v, int src, int = 32) {
    fmemu::check_mask(mask);
    return fmemu::exchange(v, (unsigned)src);
}
inline unsigned __ballot_sync(unsigned mask, int pred) { fmemu::check_mask(mask); return fmemu::ballot(pred); }
inline int __any_sync(unsigned mask, int pred) { fmemu::check_mask(mask); return fmemu::ballot(pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { fmemu::check_mask(mask); return fmemu::ballot(!pred) == 0; }
inline void __syncwarp(unsigned mask = 0xffffffffu) { fmemu::check_mask(mask); fmemu::wait(fmemu::AT_WARP); }
inline void __syncthreads() { fmemu::wait(fmemu::AT_BLOCK); }
inline void __threadfence() {}
template <typename V> inline V atomicAdd(V* a, V v) { V old = *a; *a = old + v; return old; }
template <typename V> inline V atomicExch(V* a, V v) { V old = *a; *a = v; return old; }
template <typename V> inline V atomicMin(V* a, V v) { V old = *a; if (v < old) *a = v; return old; }
template <typename V> inline V atomicMax(V* a, V v) { V old = *a; if (v > old) *a = v; return old; }

#define threadIdx (::fmemu::thread_idx())
#define blockIdx (::fmemu::block_idx())
#define blockDim (::fmemu::block_dim())
#define gridDim (::fmemu::grid_dim())
#define warpSize 32
#define FM_CHECK_ALIGN(p, n) ::fmemu::check_align((const void*)(p), (n))
"""


class EmulationError(RuntimeError):
    """The emulation refused a kernel (see the module docstring) or could not build it."""


def compiler() -> str | None:
    """The host C++ compiler ($CXX, c++ or g++) that runs, or None (a CXX
    such as /bin/false, set to keep compilers away, counts as none)."""
    import subprocess

    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            try:
                ok = subprocess.run([name, "--version"], capture_output=True, timeout=30).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
            return name if ok else None
    return None


def available() -> tuple[bool, str]:
    if not sys.platform.startswith(("linux", "darwin")):
        return False, "the emulation needs ucontext (Linux or macOS)"
    if compiler() is None:
        return False, "no C++ compiler ($CXX, c++, g++ or clang++)"
    return True, ""


def _cache_dir() -> str:
    path = os.environ.get("FMCLI_EMULATE_CACHE") or os.path.join(tempfile.gettempdir(), f"fmcli-emulate-{os.getuid()}")
    os.makedirs(path, exist_ok=True)
    return path


def build(names: list[str], source: str | None = None) -> str:
    """Compile the kernels `names` (C++ name expressions) into a shared
    library; cached by the text compiled.  Returns its path."""
    source = load_source() if source is None else source
    wrappers = []
    for i, name in enumerate(names):
        wrappers.append(
            f'extern "C" int fmemu_launch_{i}(unsigned g, unsigned b, void** a, char* e, int n) '
            f"{{ return fmemu::launch(&{name}, g, b, a, e, n); }}\n"
            f'extern "C" int fmemu_signature_{i}(long long* o, int cap) '
            f"{{ return fmemu::signature(&{name}, o, cap); }}\n")
    text = EMULATION + "\n" + source + "\n" + "".join(wrappers)
    cxx = compiler()
    if cxx is None:
        raise EmulationError("no C++ compiler for the kernel emulation")
    # no _FORTIFY_SOURCE: its longjmp check refuses a jump between stacks
    flags = ["-std=c++17", "-O0", "-U_FORTIFY_SOURCE", "-shared", "-fPIC", "-fno-strict-aliasing", "-w"]
    digest = hashlib.sha256((text + " ".join([cxx] + flags)).encode()).hexdigest()[:24]
    out = os.path.join(_cache_dir(), f"kernels-{digest}.so")
    if os.path.exists(out):
        return out
    src = out[:-3] + ".cpp"
    with open(src, "w", encoding="utf-8") as f:
        f.write(text)
    tmp = f"{out}.{os.getpid()}.tmp"
    proc = subprocess.run([cxx, *flags, "-o", tmp, src], capture_output=True, text=True)
    if proc.returncode:
        raise EmulationError(f"compiling the emulated kernels failed:\n{proc.stderr[-4000:]}")
    os.replace(tmp, out)
    return out


ROWS_IN_FLIGHT_ENV = "FMCLI_EMULATE_ROWS_IN_FLIGHT"

# Where fm_train_rows takes the parameters, its positions and its per-position
# outputs (its parameter list in fm_kernels.cu; a test checks the types).
TRAIN_ROWS_PARAMS = (2, 3, 4, 5)        # B, L, F, R
TRAIN_ROWS_POS0, TRAIN_ROWS_COUNT = 14, 15
TRAIN_ROWS_PER_POSITION = (18, 19, 20)  # status, rloss, rweight (indexed from pos0)


class EmulatedKernel:
    """One kernel, called like a CuPy RawKernel: kernel(grid, block, args)."""

    def __init__(self, lib, index: int, name: str, counter: Counter | None = None):
        self.name = name
        self.counter = counter if counter is not None else Counter()
        self._launch = getattr(lib, f"fmemu_launch_{index}")
        self._launch.restype = ctypes.c_int
        sig = getattr(lib, f"fmemu_signature_{index}")
        sig.restype = ctypes.c_int
        buf = (ctypes.c_longlong * 3 * 64)()
        n = sig(buf, 3 * 64)
        flat = np.frombuffer(buf, dtype=np.int64)[: 3 * n].reshape(n, 3)
        self.params = [tuple(int(v) for v in row) for row in flat]   # (size, pointee size or -1, floating)

    def __call__(self, grid, block, args, *, shared_mem=0):
        self.counter[self.name.split("<")[0]] += 1
        self.launch(grid, block, args)

    def launch(self, grid, block, args) -> None:
        """Run the kernel (uncounted)."""
        grid, block = int(np.prod(grid)), int(np.prod(block))
        if len(args) != len(self.params):
            raise EmulationError(f"{self.name}: {len(args)} arguments for {len(self.params)} parameters")
        keep, ptrs = [], []
        for i, (arg, (size, pointee, floating)) in enumerate(zip(args, self.params)):
            where = f"{self.name}: argument {i}"
            if isinstance(arg, np.ndarray):
                if pointee < 0:
                    raise EmulationError(f"{where}: an array for a scalar parameter")
                if not arg.flags.c_contiguous:
                    raise EmulationError(f"{where}: a non-contiguous array")
                if arg.dtype.itemsize != pointee or (arg.dtype.kind == "f") != bool(floating):
                    raise EmulationError(f"{where}: a {arg.dtype} array for a pointer to "
                                         f"{'floating' if floating else 'integer'} values of {pointee} bytes")
                cell = ctypes.c_void_p(arg.ctypes.data)
            elif isinstance(arg, np.generic):
                if pointee >= 0:
                    raise EmulationError(f"{where}: a scalar for a pointer parameter")
                if arg.dtype.itemsize != size or (arg.dtype.kind == "f") != bool(floating):
                    raise EmulationError(f"{where}: a {arg.dtype} scalar for a "
                                         f"{'floating' if floating else 'integer'} parameter of {size} bytes")
                cell = (ctypes.c_char * size).from_buffer_copy(arg.tobytes())
            else:
                raise EmulationError(f"{where}: {type(arg).__name__} (give NumPy arrays and NumPy scalars)")
            keep.append(cell)
            ptrs.append(ctypes.addressof(cell))
        argv = (ctypes.c_void_p * max(1, len(ptrs)))(*ptrs)
        err = ctypes.create_string_buffer(512)
        if self._launch(ctypes.c_uint(grid), ctypes.c_uint(block), argv, err, ctypes.c_int(512)):
            raise EmulationError(f"{self.name}: {err.value.decode()}")


class InFlightRows:
    """fm_train_rows with N rows in flight (see the module docstring): the
    positions of a launch in groups of N; each row of a group is launched
    alone on working copies of B, L, F and R reset to the group's start, its
    changed elements are noted and undone, and after the group every row's
    changes are written to the live arrays in row order."""

    def __init__(self, kernel: EmulatedKernel, n: int):
        self.kernel, self.n, self.name = kernel, int(n), kernel.name

    def __call__(self, grid, block, args, *, shared_mem=0):
        k = self.kernel
        k.counter[self.name.split("<")[0]] += 1
        args = list(args)
        pos0, count = int(args[TRAIN_ROWS_POS0]), int(args[TRAIN_ROWS_COUNT])
        live = [args[i] for i in TRAIN_ROWS_PARAMS]
        work = [a.copy() for a in live]
        outs = {i: args[i] for i in TRAIN_ROWS_PER_POSITION}
        one = list(args)
        for i, w in zip(TRAIN_ROWS_PARAMS, work):
            one[i] = w
        for g0 in range(0, count, self.n):
            for w, a in zip(work, live):   # every row of the group reads these
                np.copyto(w, a)
            snap = [w.copy() for w in work]
            writes = []
            for j in range(g0, min(g0 + self.n, count)):
                one[TRAIN_ROWS_POS0], one[TRAIN_ROWS_COUNT] = np.int64(pos0 + j), np.int64(1)
                for i, out in outs.items():
                    one[i] = out[j:]
                k.launch(1, 32, one)
                row = []
                for w, s0 in zip(work, snap):
                    at = np.flatnonzero(w != s0)
                    row.append((at, w[at]))
                    w[at] = s0[at]
                writes.append(row)
            for row in writes:                 # in row order: the last write wins
                for a, (at, vals) in zip(live, row):
                    a[at] = vals


class EmulatedBackend:
    """The backend interface of fmcli.gpu.state on NumPy and the emulation.

    sm_count, blocks_per_sm and warps_per_block shape the launches (one warp
    in all makes per-row training sequential and reproducible).  instances:
    (dtype, kp) pairs to compile together up front (one compiler run).
    rows_in_flight: see the module docstring (None: $FMCLI_EMULATE_ROWS_IN_FLIGHT,
    else the warps of a full launch, run as they always are)."""

    name = "emulated"

    def __init__(self, *, sm_count: int = 1, blocks_per_sm: int = 1, warps_per_block: int = 1,
                 instances=(), rows_in_flight: int | None = None):
        ok, why = available()
        if not ok:
            raise EmulationError(why)
        self.xp = np
        self.sm_count = sm_count
        self.blocks_per_sm = blocks_per_sm
        self.warps_per_block = warps_per_block
        if rows_in_flight is None and os.environ.get(ROWS_IN_FLIGHT_ENV):
            try:
                rows_in_flight = int(os.environ[ROWS_IN_FLIGHT_ENV])
            except ValueError:
                raise EmulationError(f"{ROWS_IN_FLIGHT_ENV} must be a whole number of rows, "
                                     f"not {os.environ[ROWS_IN_FLIGHT_ENV]!r}") from None
        if rows_in_flight is not None and rows_in_flight < 1:
            raise EmulationError(f"rows in flight must be 1 or more, not {rows_in_flight}")
        self.interleave = rows_in_flight
        self.launches: Counter = Counter()   # kernel launches, by kernel name
        self._modules: dict = {}
        if instances:
            self._load([(np.dtype(d).name, int(k)) for d, k in instances])

    @property
    def rows_in_flight(self) -> int:
        """Rows trained at once: N as given, else the warps of a full launch."""
        if self.interleave is not None:
            return self.interleave
        return self.sm_count * self.blocks_per_sm * self.warps_per_block

    @staticmethod
    def asnumpy(a) -> np.ndarray:
        return np.array(a)   # a copy, as from a device

    def synchronize(self) -> None:
        pass

    def free_memory(self) -> int | None:
        return None

    def describe(self) -> str:
        return "CPU emulation of the CUDA kernels"

    def _load(self, keys) -> None:
        names = [n for d, k in keys for n in kernel_names(d, k)]
        lib = ctypes.CDLL(build(names))
        per = len(names) // len(keys)
        for j, key in enumerate(keys):
            part = names[j * per : (j + 1) * per]
            kernels = {n.split("<")[0]: EmulatedKernel(lib, j * per + i, n, self.launches)
                       for i, n in enumerate(part)}
            if self.interleave is not None and self.interleave > 1:
                kernels["fm_train_rows"] = InFlightRows(kernels["fm_train_rows"], self.interleave)
            self._modules[key] = kernels

    def module(self, dtype, kp: int) -> dict:
        key = (np.dtype(dtype).name, int(kp))
        if key not in self._modules:
            self._load([key])
        return self._modules[key]
