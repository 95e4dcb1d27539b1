"""Data-parallel training on MPI through mpi4py, with Horovod's names.

    mpiexec -n 4 python -m mpi4py train.py

    from fastconv.keras import distributed as hvd
    hvd.init()
    optimizer = hvd.DistributedOptimizer(keras.optimizers.Adam(0.001 * hvd.size()))
    model.compile(optimizer=optimizer, loss=..., metrics=[...])
    model.fit(x_shard, y_shard, batch_size=64, verbose=1 if hvd.rank() == 0 else 0,
              callbacks=[hvd.BroadcastGlobalVariablesCallback(0), hvd.MetricAverageCallback()])

mpi4py is imported on first use (init() or any collective), so a single-process program never loads
it. Every reduction here is deterministic: each rank's contribution is summed in rank order (a
reduce-scatter whose segments are summed rank 0, 1, 2, ..., then an allgather), never with
MPI_Allreduce, whose algorithm (and so its rounding) depends on the MPI library, its settings and the
message size. Every rank therefore gets bitwise the same result, run after run, on any MPI.

Horovod's contract holds here: each rank trains on the data it is given and `batch_size` is per
rank. `keras.distribution.DataParallel` (see fastconv.keras.distribution) is the Keras 3 way, where
fit shards one global batch across the ranks by itself.
"""
import contextlib
import copy
import math
import os
import pickle
import time
import warnings

import numpy as np

from fastconv import _C
from fastconv.keras.callbacks import Callback

INSTALL_HINT = 'pip install "fastconv[mpi]"'

_comm = None  # a private duplicate of the communicator given to init(), so user traffic never mixes in
_grad_comm = None  # another, for the gradient buckets' messages, which may be under way during other exchanges
_local_comm = None
_step_weights = None  # set by a DataParallel fit step: every rank's share of the global batch
_checked_layouts = set()  # the gradient layouts all ranks are known to share
_areas = {}  # _area_key(layout) -> its _SharedArea (None: its buckets travel as messages)
_timings = {"reductions": 0, "reduce_seconds": 0.0, "steps": 0, "step_seconds": 0.0}


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError("distributed training needs mpi4py and an MPI library; install them with "
                          f"{INSTALL_HINT} (mpi4py>=4.1 and the mpich wheel), or on a cluster build mpi4py "
                          "against the site's MPI (pip install --no-binary mpi4py mpi4py)") from error
    return MPI


def launched_by_mpi():
    """Whether this process is one of several started by an MPI launcher (mpiexec, mpirun, srun).
    Read from the launchers' environment, so it does not load MPI."""
    names = ["PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS"]
    if "PMIX_RANK" in os.environ:  # srun --mpi=pmix tells the size through Slurm's variables only
        names.append("SLURM_STEP_NUM_TASKS")
    for name in names:
        value = os.environ.get(name)
        if value is not None and value.isdigit() and int(value) > 1:
            return True
    return False


def is_initialized():
    return _comm is not None


def init(comm=None):
    """Start (or join) MPI and make its ranks this job's workers. Calling it again does nothing.

    `comm` is an mpi4py communicator (default COMM_WORLD), e.g. to train on a subset of the ranks.
    When OMP_NUM_THREADS is not set, each rank takes an equal share of this machine's cores, so that
    ranks x threads <= cores.
    """
    global _comm, _local_comm, _grad_comm
    if _comm is not None:
        return
    MPI = _mpi()
    if comm is None:
        comm = MPI.COMM_WORLD
    elif not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm must be an mpi4py communicator, got {type(comm).__name__}")
    _comm, _grad_comm = comm.Dup(), comm.Dup()
    _local_comm = _comm.Split_type(MPI.COMM_TYPE_SHARED, key=_comm.Get_rank())
    _share_cores()


def _share_cores():
    from fastconv import get_num_threads, set_num_threads
    local = _local_comm.Get_size()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    if "OMP_NUM_THREADS" not in os.environ and local > 1:
        set_num_threads(max(1, cores // local))
    threads, machine = get_num_threads(), os.cpu_count() or 1
    if local * threads > machine and _local_comm.Get_rank() == 0:
        warnings.warn(f"{local} ranks on this machine x {threads} thread{'s' if threads > 1 else ''} each is more "
                      f"than its {machine} cores; set OMP_NUM_THREADS (or --threads) so that ranks x threads <= cores",
                      RuntimeWarning, stacklevel=3)


def _world():
    if _comm is None:
        init()
    return _comm


def shutdown():
    """Free the communicators made by init() (MPI itself ends when the process exits)."""
    global _comm, _local_comm, _grad_comm, _in_flight
    for area in _areas.values():
        if area is not None:
            area.free()
    _areas.clear()
    if _comm is not None:
        _local_comm.Free()
        _grad_comm.Free()
        _comm.Free()
    _comm = _local_comm = _grad_comm = _in_flight = None
    _checked_layouts.clear()


def rank():
    """This process's rank, 0 to size() - 1."""
    return _world().Get_rank()


def size():
    """The number of ranks training together."""
    return _world().Get_size()


def local_rank():
    """This process's rank among those on the same machine."""
    _world()
    return _local_comm.Get_rank()


def local_size():
    """The number of ranks on this machine."""
    _world()
    return _local_comm.Get_size()


def is_chief():
    """True on rank 0, and in a process that has not started MPI (it is alone)."""
    return _comm is None or _comm.Get_rank() == 0


def barrier():
    _world().Barrier()


# ----- collectives on NumPy arrays -----

def _numeric(value, what):
    array = np.asarray(value.value if hasattr(value, "_is_keras_variable") else value)
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise TypeError(f"{what} must be a numeric array, got dtype {array.dtype}")
    return array


def agree(value, what):
    """Check that `value` (any picklable, comparable object) is the same on every rank; raise a
    ValueError naming the first rank that differs, on every rank at once, so none is left waiting."""
    values = _world().allgather(value)
    for index, other in enumerate(values[1:], start=1):
        if other != values[0]:
            raise ValueError(f"{what} differs across ranks: rank {index} has {other!r}, rank 0 has {values[0]!r}")
    return values[0]


def _segments(count, ranks):
    bounds = [count * r // ranks for r in range(ranks + 1)]
    return [bounds[r + 1] - bounds[r] for r in range(ranks)], bounds[:-1]


_GATHER_BYTES = 1 << 20  # below this much gathered data, one exchange of whole buffers beats two rounds' latency


def _ordered_total(rows, weights, divisor, out):
    """Write into `out` the sum of `rows` (one per rank) in rank order, in float64 for float data, each
    scaled by its rank's entry of `weights` when given, then divided by `divisor` when given."""
    if len(rows) == 2 and weights is None and divisor in (None, 2) and out.dtype == np.float32:
        # Two float32 terms: their float32 sum is their float64 sum rounded to float32 (rounding twice,
        # through a type of at least 2 x 24 + 1 bits, is harmless for a sum), and halving is exact, or
        # below float32's normal range one rounding in both; so these are the float64 path's bits, at
        # a fraction of its memory traffic. Where the float32 sum overflows, the float64 path decides.
        # one pass in C: NumPy's float32 add and halving, and the check that every result is finite
        if _C.pair_sum(rows[0], rows[1], 1.0 if divisor is None else 0.5, out):
            return
    accumulate = np.float64 if out.dtype.kind == "f" else np.int64
    # Every operation is on arrays of one dtype (NumPy converts mixed float32/float64 operands in small
    # buffered blocks, at several times the cost), and no zero-filled start: the first term is
    # converted into the total.
    total = scratch = None
    for source, row in enumerate(rows):
        weight = 1 if weights is None else weights[source]
        if not weight:
            continue
        if total is None:
            total = row.astype(accumulate)
            term = total
        else:
            if scratch is None:
                scratch = np.empty(len(row), accumulate)
            np.copyto(scratch, row)
            term = scratch
        if weights is not None:
            term *= weight
        if term is scratch:
            total += scratch
    if total is None:  # every weight is 0 (reduce_gradients refuses that)
        out[...] = 0
        return
    if divisor is not None:
        total /= divisor
    out[...] = total


class _OrderedSum:
    """Every rank's 1-D `flat` (same length and dtype everywhere) summed in rank order (see
    _ordered_total), the same bits on every rank, by non-blocking point-to-point messages on `comm`:
    start it, poll() it between other work, wait() for the result.

    A reduce-scatter (rank r receives segment r of every rank's buffer and sums the p copies in rank
    order) then an allgather of the summed segments: each rank sends and receives 2(p-1)/p of the
    buffer, as in a ring allreduce. For small buffers, one exchange of the whole buffers, and each
    rank sums all of it; every element gets the same operations either way. Messages go straight to
    each peer (Isend/Irecv), never through MPI's collectives, whose algorithms (Alltoallv, Allgatherv)
    were several times slower here with MPICH; and MPI never adds anything, so its choices cannot
    change the bits."""

    def __init__(self, comm, flat, weights=None, divisor=None, tag=0, combine=None):
        self.comm, self.tag, self.weights, self.divisor = comm, tag, weights, divisor
        # combine(rows, out) writes the rows' (one per rank) sum into out; default: rank order
        self.combine = combine or (lambda rows, out: _ordered_total(rows, weights, divisor, out))
        ranks, me = comm.Get_size(), comm.Get_rank()
        self.me, self.peers = me, [r for r in range(ranks) if r != me]
        self.whole = ranks == 1 or flat.nbytes * ranks <= _GATHER_BYTES
        if self.whole:
            self.out, self.segment = np.empty_like(flat), lambda array, rank: array
        else:
            counts, displs = _segments(flat.size, ranks)
            self.out = np.empty_like(flat)
            self.segment = lambda array, rank: array[displs[rank]:displs[rank] + counts[rank]]
        mine = self.segment(flat, me)
        self.rows = [mine if r == me else np.empty_like(mine) for r in range(ranks)]
        self.requests = self._post({peer: self.segment(flat, peer) for peer in self.peers}, self.rows, 1)
        self.phase = 1

    def _post(self, sends, receives, phase):
        """Receive each peer's message into receives[peer], send it sends[peer]."""
        tag = 2 * self.tag + phase
        requests = [self.comm.Irecv(receives[peer], source=peer, tag=tag) for peer in self.peers]
        return requests + [self.comm.Isend(sends[peer], dest=peer, tag=tag) for peer in self.peers]

    def _advance(self):
        if self.phase == 1:  # every rank's copy of my segment is here: sum it, send it to the others
            mine = self.segment(self.out, self.me)
            self.combine(self.rows, mine)
            self.rows = None
            if self.whole:
                self.requests, self.phase = [], 3
                return
            self.requests = self._post({peer: mine for peer in self.peers},
                                       {peer: self.segment(self.out, peer) for peer in self.peers}, 2)
            self.phase = 2
        else:
            self.requests, self.phase = [], 3

    def poll(self):
        """Move on as far as the messages that have arrived allow, without waiting; True when done."""
        MPI = _mpi()
        while self.phase < 3 and MPI.Request.Testall(self.requests):
            self._advance()
        return self.phase == 3

    def wait(self):
        """The result (the input's shape and dtype)."""
        MPI = _mpi()
        while self.phase < 3:
            MPI.Request.Waitall(self.requests)
            self._advance()
        return self.out


_SHARED_BYTES = 1 << 30  # beyond this much shared memory for all gradient layouts together, messages instead
_use_shared_memory = True  # False: buckets always travel as messages (tests compare the two paths)


_POSTED, _READ = 0, 1  # a _SharedArea's two counters per rank and bucket


class _SharedArea:
    """A shared-memory window (MPI-3 Win.Allocate_shared) over ranks that are all on this machine,
    for one gradient layout: per bucket, one input row per rank and an output row, plus two counters
    per rank and bucket (how many of its rounds it has posted, and finished reading). A bucket's sum
    then needs no message: each rank copies its gradients into its row, and the ranks read each
    other's rows directly (see _SharedSum). Waits are on the counters, in plain memory reads, so a
    round moves on at whichever rank's poll comes first, with no MPI progress to wait for."""

    def __init__(self, comm, counts, dtype):
        MPI = _mpi()
        self.ranks, self.me, self.dtype = comm.Get_size(), comm.Get_rank(), np.dtype(dtype)
        buckets, align = len(counts), 64
        sizes = [(self.ranks + 1) * -(-count * self.dtype.itemsize // align) * align for count in counts]
        control = 2 * self.ranks * buckets * 8
        total = self.nbytes = control + sum(sizes)
        self.window = MPI.Win.Allocate_shared(total if self.me == 0 else 0, 1, comm=comm)
        memory = np.frombuffer(self.window.Shared_query(0)[0], np.uint8)[:total]
        self.window.Lock_all(MPI.MODE_NOCHECK)  # Win.Sync (a memory barrier) needs an access epoch
        if self.me == 0:
            memory[:control] = 0
        # the counters as Python ints: their checks run many times a step, where NumPy's per-call cost
        # on tiny arrays would be most of it; counter k of rank r and bucket b at (k * ranks + r) * buckets + b
        self.counters, self.buckets = memoryview(memory[:control]).cast("q"), buckets
        self.rows, self.out, offset = [], [], control
        for count, size in zip(counts, sizes):
            stride = size // (self.ranks + 1)
            rows = [memory[offset + r * stride:offset + r * stride + count * self.dtype.itemsize].view(self.dtype)
                    for r in range(self.ranks + 1)]
            self.rows.append(rows[:-1])
            self.out.append(rows[-1])
            offset += size
        self.rounds = [0] * buckets
        self.window.Sync()
        comm.Barrier()  # the counters are zero before any rank posts

    def free(self):
        self.counters.release()
        self.window.Unlock_all()
        self.window.Free()

    def _all_reached(self, counter, bucket):
        counters, step, round_ = self.counters, self.buckets, self.rounds[bucket]
        start = counter * self.ranks * step + bucket
        return all(counters[start + r * step] >= round_ for r in range(self.ranks))

    def _set(self, counter, bucket):
        self.window.Sync()  # what this rank wrote before the counter that says it is there
        self.counters[(counter * self.ranks + self.me) * self.buckets + bucket] = self.rounds[bucket]

    def begin(self, bucket):
        """This rank's input row for the bucket's next round, once every rank has finished reading the
        previous round's (usually long done: they read it before that round could end)."""
        while not self._all_reached(_READ, bucket):
            os.sched_yield()
        self.rounds[bucket] += 1
        return self.rows[bucket][self.me]

    def post(self, bucket):
        self._set(_POSTED, bucket)

    def all_posted(self, bucket):
        return self._all_reached(_POSTED, bucket)

    def finished_reading(self, bucket):
        self._set(_READ, bucket)

    def all_read(self, bucket):
        return self._all_reached(_READ, bucket)


class _SharedSum:
    """_OrderedSum's result (the same function of the same rows, so the same bits) for a bucket of a
    _SharedArea whose input row this rank has filled: rank r sums segment r of every rank's row into
    the shared output, in rank order, and reads the others' segments once they are summed; a small
    bucket is summed whole by every rank, into memory of its own, which needs no second wait."""

    def __init__(self, area, bucket, weights, divisor):
        self.area, self.bucket, self.weights, self.divisor = area, bucket, weights, divisor
        rows, ranks = area.rows[bucket], area.ranks
        count = len(rows[0])
        self.whole = rows[0].nbytes * ranks <= _GATHER_BYTES
        if self.whole:
            self.out, self.part = np.empty(count, area.dtype), slice(None)
        else:
            counts, displs = _segments(count, ranks)
            self.out, self.part = area.out[bucket], slice(displs[area.me], displs[area.me] + counts[area.me])
        area.post(bucket)
        self.phase = 1
        self.poll()

    def poll(self):
        area, bucket = self.area, self.bucket
        if self.phase == 1 and area.all_posted(bucket):
            area.window.Sync()
            _ordered_total([row[self.part] for row in area.rows[bucket]], self.weights, self.divisor,
                           self.out[self.part])
            area.finished_reading(bucket)  # for a segmented bucket: also "my segment is summed"
            self.phase = 3 if self.whole else 2
        if self.phase == 2 and area.all_read(bucket):
            area.window.Sync()
            self.phase = 3
        return self.phase == 3

    def wait(self):
        """The result; for a segmented bucket a view of the shared output, valid until this rank
        starts the bucket's next round."""
        while not self.poll():
            os.sched_yield()
        return self.out


def _rank_ordered_sum(flat, weights=None, divisor=None):
    """Every rank's 1-D `flat` (same length and dtype everywhere) summed in rank order, each scaled by
    its rank's entry of `weights` when given, then divided by `divisor` when given; the same bits on
    every rank (see _OrderedSum)."""
    return _OrderedSum(_world(), flat, weights, divisor).wait()


def allreduce(tensor, op="average", name=None):
    """The element-wise sum ("sum") or mean ("average") of `tensor` over all ranks, identical on each.

    Every rank must pass an array of the same shape and dtype (checked). Integer arrays are summed in
    int64, float arrays in float64; the result has the input's dtype ("average" of ints is float64)."""
    if op not in ("average", "sum"):
        raise ValueError(f"op must be 'average' or 'sum', got {op!r}")
    array = _numeric(tensor, "allreduce's tensor")
    agree((array.shape, array.dtype.str), f"allreduce{'' if name is None else f' {name!r}'}'s (shape, dtype)")
    flat = np.ascontiguousarray(array).reshape(-1)
    if op == "sum":
        return _rank_ordered_sum(flat).reshape(array.shape)
    if array.dtype.kind != "f":
        flat = flat.astype(np.float64)
    return _rank_ordered_sum(flat, divisor=size()).reshape(array.shape)


def broadcast(tensor, root_rank=0, name=None):
    """Rank root_rank's array, on every rank (the others' `tensor` only gives the expected shape)."""
    comm = _world()
    root_rank = _check_root(root_rank)
    array = _numeric(tensor, "broadcast's tensor")
    # checked on every rank at once (an error on some ranks only would leave the others in Bcast)
    agree((array.shape, array.dtype.str), f"broadcast{'' if name is None else f' {name!r}'}'s (shape, dtype)")
    buffer = np.ascontiguousarray(array).copy() if comm.Get_rank() == root_rank else np.empty_like(array)
    comm.Bcast(buffer, root=root_rank)
    return buffer


def allgather(tensor, name=None):
    """Every rank's array concatenated along the first axis, in rank order (first axes may differ)."""
    comm = _world()
    array = _numeric(tensor, "allgather's tensor")
    if array.ndim == 0:
        array = array.reshape(1)
    shapes = agree((array.shape[1:], array.dtype.str), f"allgather{'' if name is None else f' {name!r}'}'s "
                   "(shape after the first axis, dtype)")
    lengths = comm.allgather(len(array))
    row = int(np.prod(shapes[0], dtype=np.int64))
    counts = [length * row for length in lengths]
    displs = [sum(counts[:r]) for r in range(len(counts))]
    out = np.empty((sum(lengths),) + tuple(array.shape[1:]), array.dtype)
    comm.Allgatherv(np.ascontiguousarray(array), [out, (counts, displs)])
    return out


def broadcast_object(obj, root_rank=0):
    return _world().bcast(obj, root=_check_root(root_rank))


def allgather_object(obj):
    return _world().allgather(obj)


_WRITTEN_TAG = 0x5A7E  # rank 0's notes "this file is written" to the other ranks, on _comm
_WRITTEN_WAIT_SECONDS = 600.0  # how long the other ranks wait for rank 0's note before they give up
_written_notes = []  # rank 0's sends of those notes, until they are known to be done


def announce_written(path, error=None):
    """On rank 0, after it wrote `path` for every rank (or failed to, with `error`): tell the others,
    which wait in await_written. Never blocks: a rank that does not wait for the note never reads it."""
    comm = _world()
    _written_notes[:] = [request for request in _written_notes if not request.Test()]
    if error is not None:
        try:
            pickle.dumps(error)
        except Exception:  # noqa: BLE001  (an exception that cannot travel is sent as its message)
            error = RuntimeError(f"{type(error).__name__}: {error}")
    for other in range(1, comm.Get_size()):
        _written_notes.append(comm.isend((os.fspath(path), error), dest=other, tag=_WRITTEN_TAG))


def await_written(path):
    """On a rank other than 0: return once rank 0 has written `path` (see announce_written), so that a
    load on this rank that follows reads the new file; raise rank 0's error when its write failed."""
    comm, path = _world(), os.fspath(path)
    deadline = time.monotonic() + _WRITTEN_WAIT_SECONDS
    while True:
        if comm.iprobe(source=0, tag=_WRITTEN_TAG):
            written, error = comm.recv(source=0, tag=_WRITTEN_TAG)
            if written != path:
                continue  # a note of a save that only rank 0 made
            if error is not None:
                raise error
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank 0 did not write {path!r} within {_WRITTEN_WAIT_SECONDS:.0f} s: under a "
                               "keras.distribution rank 0 writes the file for every rank, so call model.save "
                               "(or save_weights) on every rank, rank 0 included")
        time.sleep(0.001)


def _check_root(root_rank):
    if isinstance(root_rank, bool) or not isinstance(root_rank, (int, np.integer)) or \
            not 0 <= root_rank < _world().Get_size():
        raise ValueError(f"root_rank must be a rank from 0 to {_world().Get_size() - 1}, got {root_rank!r}")
    return int(root_rank)


def broadcast_variables(variables, root_rank=0):
    """Give every rank root_rank's values of `variables` (keras Variables), in one message."""
    variables = list(variables)
    agree([(v.shape, v.dtype.str) for v in variables], "the variables to broadcast (shape, dtype)")
    for dtype in sorted({v.dtype.str for v in variables}):
        group = [v for v in variables if v.dtype.str == dtype]
        flat = np.concatenate([v.value.reshape(-1) for v in group]) if group else np.empty(0, dtype)
        flat = broadcast(flat, root_rank)
        offset = 0
        for variable in group:
            variable.value[...] = flat[offset:offset + variable.size].reshape(variable.shape)
            offset += variable.size


# ----- gradients -----

_BUCKET_BYTES = 1 << 20  # gradients travel in buckets of about this many bytes, the last layers' first
_in_flight = None  # the step's reduction that the backward pass started and apply() finishes
_plans = {}  # (layout, _BUCKET_BYTES) -> _bucket_plan's result


def _buckets(sizes, itemsize):
    """Lists of variable indices, from the last variable back, each closed once it holds _BUCKET_BYTES:
    the last layers' gradients are final first in the backward pass. A function of the layout alone,
    so every rank cuts the same buckets."""
    buckets, current, nbytes = [], [], 0
    for index in reversed(range(len(sizes))):
        current.append(index)
        nbytes += sizes[index] * itemsize
        if nbytes >= _BUCKET_BYTES:
            buckets.append(current)
            current, nbytes = [], 0
    return buckets + [current] if current else buckets


def _shape(variable):
    # a Variable's own shape: np.shape() goes through its __array_function__, slow on the per-step path
    shape = getattr(variable, "shape", None)
    return tuple(shape) if shape is not None else tuple(np.shape(variable))


def _bucket_plan(layout):
    """For a layout (worked out once per layout): the variables' sizes, their buckets, each variable's
    offset in its bucket's row, each bucket's gradient floats (a flag per variable follows them), and
    each variable's bucket."""
    key = (layout, _BUCKET_BYTES)
    if key not in _plans:
        sizes = [int(np.prod(shape, dtype=np.int64)) for shape in layout[0]]
        buckets = _buckets(sizes, np.dtype(layout[1]).itemsize)
        offsets, counts = [0] * len(sizes), []
        for bucket in buckets:
            count = 0
            for index in bucket:
                offsets[index] = count
                count += sizes[index]
            counts.append(count)
        bucket_of = {index: b for b, bucket in enumerate(buckets) for index in bucket}
        _plans[key] = sizes, buckets, offsets, counts, bucket_of
    return _plans[key]


def _area_key(layout):
    return layout, _BUCKET_BYTES, _use_shared_memory


def _new_area(layout):
    """A _SharedArea for the layout's buckets when every rank is on this machine (and it is not too
    large), else None; collective: every rank calls it for the same layouts in the same order."""
    comm = _world()
    _, buckets, _, counts, _ = _bucket_plan(layout)
    counts = [count + len(bucket) for count, bucket in zip(counts, buckets)]  # + a flag per variable
    nbytes = (comm.Get_size() + 1) * sum(counts) * np.dtype(layout[1]).itemsize
    # areas live until shutdown() (freeing one is collective), so a process that builds many models
    # stops making them at a bound, the same on every rank
    taken = sum(area.nbytes for area in _areas.values() if area is not None)
    if not _use_shared_memory or _local_comm.Get_size() != comm.Get_size() or taken + nbytes > _SHARED_BYTES:
        return None
    return _SharedArea(_grad_comm, counts, layout[1])


def _layout(variables):
    shapes = tuple(_shape(v) for v in variables)
    # The variables' dtype, not the gradients': a rank without samples has no gradients to look at.
    dtypes = {v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype for v in variables}
    dtype = np.result_type(*dtypes) if len(dtypes) > 1 else np.dtype(dtypes.pop() if dtypes else np.float32)
    return shapes, (dtype if dtype.kind == "f" else np.dtype(np.float64)).str


def _weighting(weights, op, ranks):
    """The per-rank weights (None: all 1) and the divisor (None: 1) that make reduce_gradients' mean."""
    if weights is None:
        weights = [1.0] * ranks
    weights = [float(w) for w in weights]
    if len(weights) != ranks:
        raise ValueError(f"weights must hold one weight per rank ({ranks}), got {len(weights)}")
    if not sum(weights) > 0:
        raise ValueError("the ranks' gradient weights sum to zero: at least one rank needs samples")
    if all(w == weights[0] for w in weights):  # even shards: the weighted mean is the plain mean, without
        weights = [1.0] * ranks                  # a multiplication per element and rank
    total_weight = sum(weights)
    divisor = total_weight if op == "average" else total_weight / ranks
    return None if all(w == 1 for w in weights) else weights, None if divisor == 1 else divisor


class _GradientReduction:
    """One step's gradient reduction in buckets (see _buckets), each a non-blocking _OrderedSum on
    the gradient communicator: a bucket starts as soon as all its gradients are final, and finish()
    starts the rest and waits for all. Each bucket carries a flag per variable saying which ranks had
    a gradient. Every element gets the same operations whichever bucket it travels in, so the result
    does not depend on when the buckets start."""

    def __init__(self, variables, layout, weights, divisor, area=None):
        self.variables, self.weights, self.divisor = variables, weights, divisor
        self.shapes, self.dtype = layout[0], np.dtype(layout[1])
        self.sizes, self.buckets, self.offsets, self.counts, self.bucket_of = _bucket_plan(layout)
        self.area = area  # a _SharedArea when all ranks are on this machine, else None: messages
        self.position = {id(variable): index for index, variable in enumerate(variables)}
        self.missing = [len(bucket) for bucket in self.buckets]  # gradients each bucket still waits for
        self.sums, self.sent = [None] * len(self.buckets), {}
        self.rows, self.buffers = [None] * len(self.buckets), {}  # this round's input rows; gradient_buffer's views
        self.seconds = 0.0

    def _row(self, bucket):
        """The flat input of the bucket's sum: with shared memory, this rank's row of the window, once
        every rank has read the previous round's."""
        if self.rows[bucket] is None:
            count = self.counts[bucket] + len(self.buckets[bucket])
            self.rows[bucket] = np.empty(count, self.dtype) if self.area is None else self.area.begin(bucket)
        return self.rows[bucket]

    def gradient_buffer(self, variable):
        """Where the backward pass may write the variable's gradient so that its bucket needs no copy
        (see gradient_buffer()); None when it travels otherwise."""
        index = self.position.get(id(variable))
        if self.area is None or index is None or self.dtype != np.float32 or \
                getattr(variable, "regularizer", None) is not None:
            return None
        bucket = self.bucket_of[index]
        if self.sums[bucket] is not None or index in self.buffers:
            return None
        offset = self.offsets[index]
        view = self._row(bucket)[offset:offset + self.sizes[index]].reshape(self.shapes[index])
        self.buffers[index] = view
        return view

    def gradients_final(self, variables):
        """Called by the backward pass with the variables whose gradients no later layer changes:
        start each bucket they complete, and let the started ones move on."""
        started = time.perf_counter()
        for variable in variables:
            index = self.position.get(id(variable))
            if index is None or getattr(variable, "regularizer", None) is not None:
                continue  # a regularizer's gradient is added after the backward pass: finish() sends it
            bucket = self.bucket_of[index]
            self.missing[bucket] -= 1
            if not self.missing[bucket]:
                self._start(bucket, {i: self.variables[i].grad for i in self.buckets[bucket]})
        for reduction in self.sums:
            if reduction is not None:
                reduction.poll()
        self.seconds += time.perf_counter() - started

    def _start(self, bucket, grads):
        count = self.counts[bucket]
        # with shared memory, straight into this rank's row of the window, which the others read
        flat = self._row(bucket)
        for flag, index in enumerate(self.buckets[bucket]):
            offset = self.offsets[index]
            part, grad = flat[offset:offset + self.sizes[index]], grads[index]
            if grad is None:
                part[...] = 0
            elif grad is not self.buffers.get(index):  # else the backward pass wrote it there
                part[...] = grad.reshape(-1)
            flat[count + flag] = grad is not None
            self.sent[index] = grad
        self.sums[bucket] = _OrderedSum(_grad_comm, flat, self.weights, self.divisor, tag=bucket) \
            if self.area is None else _SharedSum(self.area, bucket, self.weights, self.divisor)

    def finish(self, grads, copy=True):
        """The reduced gradients of `grads` (one array per variable, or None); copy=False: some may be
        views of the shared output, which this bucket's next round overwrites."""
        for index, grad in self.sent.items():
            if grads[index] is not grad:
                raise RuntimeError(f"the gradient of {getattr(self.variables[index], 'path', '?')!r} changed after "
                                   "the backward pass started reducing it")
        for bucket, reduction in enumerate(self.sums):
            if reduction is None:
                self._start(bucket, grads)
        out = [None] * len(self.variables)
        for bucket, count, reduction in zip(self.buckets, self.counts, self.sums):
            summed = reduction.wait()
            if self.area is not None and not reduction.whole:  # the output all ranks read, and the next round's
                if copy:
                    summed = summed.copy()
                else:  # an optimizer that wrote into its gradients would change the other ranks' ones
                    summed = summed.view()
                    summed.flags.writeable = False
            for flag, index in enumerate(bucket):
                if summed[count + flag] > 0:
                    offset = self.offsets[index]
                    out[index] = summed[offset:offset + self.sizes[index]].reshape(self.shapes[index])
        return out


def _checked(layout):
    """Check, the first time a layout is reduced, that every rank reduces the same gradient shapes, so
    that a mismatch is an error naming the rank rather than a failure inside MPI; and make its shared
    memory (see _new_area), for which every rank is here too. Returns the _SharedArea or None."""
    key = _area_key(layout)
    if layout in _checked_layouts:
        if key not in _areas:  # the same layout in other buckets (tests change _BUCKET_BYTES)
            _areas[key] = _new_area(layout)
        return _areas[key]
    comm = _world()
    for index, other in enumerate(comm.allgather(layout)):
        if other != layout:
            raise ValueError(f"rank {index} reduces gradients of shapes {list(other[0])} ({np.dtype(other[1])}), "
                             f"rank {comm.Get_rank()} of {list(layout[0])} ({np.dtype(layout[1])}): every rank "
                             "must train the same model")
    _checked_layouts.add(layout)
    _areas[key] = _new_area(layout)
    return _areas[key]


def start_reduction(optimizer, variables):
    """For a training step whose `optimizer` reduces gradients across ranks: start the step's reduction
    and return the function the backward pass calls with the variables whose gradients are final (it
    sends them in buckets while the earlier layers' backward computes, as PyTorch's DDP does);
    optimizer.apply then finishes it. None when there is nothing to overlap (one process, a local
    optimizer, or the first step of a model, whose reduction checks that all ranks agree on it)."""
    global _in_flight
    _in_flight = None
    if not is_distributed(optimizer) or _comm is None or _comm.Get_size() == 1:
        return None
    variables = list(variables)
    layout = _layout(variables)
    if layout not in _checked_layouts or _area_key(layout) not in _areas:
        return None
    _in_flight = _GradientReduction(variables, layout, *_weighting(_step_weights, optimizer._distributed_op,
                                                                    _comm.Get_size()), _areas[_area_key(layout)])
    return _in_flight.gradients_final


def gradient_buffer(variable):
    """Where a layer's backward pass may write `variable`'s gradient (an array of its shape, or None):
    in a DataParallel step whose ranks share memory, the variable's place in this rank's row of the
    reduction, which then needs no copy of it. Only for the first gradient of the variable in the step
    (a shared layer's second call adds to it) and only while its bucket has not started."""
    if _in_flight is None or variable.grad is not None:
        return None
    return _in_flight.gradient_buffer(variable)


def reduce_gradients(grads, variables, weights=None, op="average", copy=True):
    """The weighted mean of each gradient over the ranks, sum_r(weights[r] * g_r) / sum(weights)
    (op="sum": that times the number of ranks), bitwise identical on every rank. `weights` holds one
    weight per rank, the same list on every rank (None: all 1, a plain mean). A gradient that is None
    on this rank but not on another counts as zeros here; one that is None on every rank (or on every
    rank of weight 0) stays None.

    The gradients travel in buckets (see _GradientReduction); a reduction that start_reduction began
    during the backward pass is finished here when `grads` are that step's gradients. The first
    reduction of a given list of variables also checks that every rank reduces the same shapes.
    copy=False is for a caller that uses the results at once and only reads them (DistributedOptimizer's
    apply): they may be read-only views of shared memory that every rank reads and the next reduction of
    these variables overwrites."""
    global _in_flight
    grads, variables = list(grads), list(variables)
    if len(grads) != len(variables):
        raise ValueError(f"one gradient per variable is needed, got {len(grads)} gradients for "
                         f"{len(variables)} variables")
    arrays = [None if g is None else _numeric(g, f"the gradient of {getattr(v, 'path', v)!r}")
              for g, v in zip(grads, variables)]
    for array, variable in zip(arrays, variables):
        if array is not None and array.shape != _shape(variable):
            raise ValueError(f"gradient of shape {array.shape} for variable {getattr(variable, 'path', '?')!r} "
                             f"of shape {_shape(variable)}")
    started = time.perf_counter()
    reduction, _in_flight = _in_flight, None
    if reduction is not None and (len(reduction.variables) != len(variables) or
                                  any(a is not b for a, b in zip(reduction.variables, variables))):
        raise RuntimeError("a gradient reduction started in the backward pass was not finished by the step's "
                           "optimizer.apply")
    spent = 0.0
    if reduction is None:
        layout = _layout(variables)
        weighting = _weighting(weights, op, size())
        reduction = _GradientReduction(variables, layout, *weighting, _checked(layout))
    else:
        spent = reduction.seconds
    out = reduction.finish(arrays, copy)
    _timings["reductions"] += 1
    _timings["reduce_seconds"] += spent + time.perf_counter() - started
    return out


def timings(reset=False):
    """What the gradient reductions have cost this rank: their number and seconds (which include
    waiting for the slowest rank), and, for DataParallel fits, the training steps' number and
    seconds (computation and reductions together)."""
    result = dict(_timings)
    if reset:
        _timings.update(reductions=0, reduce_seconds=0.0, steps=0, step_seconds=0.0)
    return result


@contextlib.contextmanager
def step_weights(weights):
    """Within this block a distributed optimizer weighs rank r's gradients by weights[r] (a
    DataParallel fit step: each rank's number of samples in the global batch)."""
    global _step_weights
    previous, _step_weights = _step_weights, list(weights)
    try:
        yield
    finally:
        _step_weights = previous


def _distributed_apply(optimizer, op):
    apply = type(optimizer).apply

    def distributed_apply(grads, trainable_variables):
        grads, trainable_variables = list(grads), list(trainable_variables)
        reduced = reduce_gradients(grads, trainable_variables, _step_weights, op, copy=False)
        return apply(optimizer, reduced, trainable_variables)

    return distributed_apply


def is_distributed(optimizer):
    return getattr(optimizer, "_distributed_op", None) is not None


def make_distributed(optimizer, op="average"):
    """Make `optimizer` (in place) average its gradients over the ranks before each update."""
    if op not in ("average", "sum"):
        raise ValueError(f"op must be 'average' or 'sum', got {op!r}")
    optimizer._distributed_op = op
    optimizer.apply = _distributed_apply(optimizer, op)  # apply_gradients goes through apply
    return optimizer


def make_local(optimizer):
    """Undo make_distributed."""
    for name in ("apply", "_distributed_op"):
        optimizer.__dict__.pop(name, None)
    return optimizer


def DistributedOptimizer(optimizer, op="average", name=None):  # noqa: N802  (Horovod's name)
    """A copy of `optimizer` (any fastconv optimizer, or its name) whose `apply` / `apply_gradients`
    first average the gradients over all ranks (op="sum": sum them), in a fixed order, so that every
    rank takes the same step. Works with fit and with custom GradientTape loops alike. As in Horovod,
    scale the learning rate with size() yourself (and see LearningRateWarmupCallback)."""
    from fastconv.keras import optimizers
    optimizer = optimizers.get(optimizer)
    if is_distributed(optimizer):
        raise ValueError("this optimizer is already a DistributedOptimizer")
    wrapped = copy.copy(optimizer)
    wrapped._slots = {variable: tuple(slot.copy() for slot in slots) for variable, slots in optimizer._slots.items()}
    if name is not None:
        wrapped.name = name
    _world()
    return make_distributed(wrapped, op)


# ----- callbacks -----

class BroadcastGlobalVariablesCallback(Callback):
    """At the start of training, give every rank root_rank's weights (and optimizer state, when it has
    any), so that all ranks start from the same point whatever their random initialisation."""

    def __init__(self, root_rank=0):
        super().__init__()
        self.root_rank = root_rank

    def on_train_begin(self, logs=None):
        broadcast_model(self.model, self.root_rank)


def broadcast_model(model, root_rank=0):
    """Broadcast a model's weights, and its optimizer's step count and state, from root_rank."""
    broadcast_variables(model.weights, root_rank)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return
    optimizer.iterations = broadcast_object(optimizer.iterations, root_rank)
    if hasattr(optimizer, "_momentum_product"):
        optimizer._momentum_product = broadcast_object(optimizer._momentum_product, root_rank)
    index = {id(v): i for i, v in enumerate(model.weights)}
    # Optimizer state is keyed by variable; send which variables have it, then the arrays.
    owned = sorted(index[id(v)] for v in optimizer._slots if id(v) in index)
    owned = broadcast_object(owned, root_rank)
    weights = model.weights
    for i in owned:
        variable = weights[i]
        slots = optimizer._slots.get(variable)
        if slots is None:
            slots = optimizer._slots[variable] = optimizer._new_slots(variable.value)
        for slot in slots:
            slot[...] = broadcast(slot, root_rank)


class MetricAverageCallback(Callback):
    """At the end of every epoch, replace each logged metric by its average over the ranks (in rank
    order), so that every rank's History, EarlyStopping and checkpoints see the same numbers."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        gathered = allgather_object(dict(logs))
        for key in list(logs):
            values = [g[key] for g in gathered if key in g]
            if len(values) != len(gathered):
                raise ValueError(f"metric {key!r} is logged on some ranks only")
            if all(isinstance(v, (int, float, np.integer, np.floating)) for v in values):
                total = 0.0
                for value in values:
                    total += float(value)
                logs[key] = total / len(values)


class LearningRateWarmupCallback(Callback):
    """Horovod's gradual warm-up (Goyal et al., 2017): over the first `warmup_epochs` epochs, raise
    the learning rate step by step from initial_lr / size() to initial_lr (the rate scaled for the
    larger global batch). With momentum_correction, SGD's momentum is scaled by the rate's change in
    the step the rate changes, as in Horovod."""

    def __init__(self, initial_lr, warmup_epochs=5, momentum_correction=True, steps_per_epoch=None, verbose=0):
        super().__init__()
        if isinstance(initial_lr, bool) or not isinstance(initial_lr, (int, float, np.floating)) or \
                not 0 <= initial_lr < math.inf:
            raise ValueError(f"initial_lr must be a finite number >= 0, got {initial_lr!r}")
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, (int, float)) or not warmup_epochs > 0:
            raise ValueError(f"warmup_epochs must be a positive number, got {warmup_epochs!r}")
        self.initial_lr, self.warmup_epochs = float(initial_lr), warmup_epochs
        self.momentum_correction, self.steps_per_epoch, self.verbose = momentum_correction, steps_per_epoch, verbose
        self.current_epoch = 0
        self._restore_momentum = None

    def _multiplier(self, epoch):
        ranks = size()
        return 1.0 / ranks * (epoch * (ranks - 1) / self.warmup_epochs + 1)

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.current_epoch >= self.warmup_epochs:
            return
        steps = self.steps_per_epoch or self.params.get("steps")
        if not steps:
            raise ValueError("LearningRateWarmupCallback needs steps_per_epoch when fit does not know the "
                             "number of steps per epoch")
        optimizer = self.model.optimizer
        old_lr = optimizer.learning_rate
        new_lr = self.initial_lr * self._multiplier(self.current_epoch + (batch + 1) / steps)
        optimizer.learning_rate = new_lr
        momentum = getattr(optimizer, "momentum", 0.0)
        if self.momentum_correction and momentum and old_lr > 0:
            self._restore_momentum = momentum
            optimizer.momentum = momentum * new_lr / old_lr

    def on_train_batch_end(self, batch, logs=None):
        if self._restore_momentum is not None:
            self.model.optimizer.momentum = self._restore_momentum
            self._restore_momentum = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = self.model.optimizer.learning_rate
        if epoch == math.ceil(self.warmup_epochs) - 1 and self.verbose and is_chief():
            print(f"\nEpoch {epoch + 1}: finished gradual learning rate warmup to "
                  f"{self.model.optimizer.learning_rate:g}.")


# ----- error handling under mpiexec -----

def abort_on_error(function, *args):
    """Run function(*args) and return its result; if it raises, or returns a non-zero exit code,
    abort every rank (as `python -m mpi4py` does for a script that raises), so that no rank waits
    forever in a collective for one that has left. Without MPI started, only runs it."""
    import traceback
    try:
        result = function(*args)
    except BaseException as error:
        if _comm is None or _comm.Get_size() == 1:
            raise
        code = error.code if isinstance(error, SystemExit) else 1
        if code in (None, 0):
            raise
        if not isinstance(error, SystemExit):
            traceback.print_exc()
        _abort(code if isinstance(code, int) else 1)
        raise
    if result not in (None, 0) and _comm is not None and _comm.Get_size() > 1:
        _abort(result if isinstance(result, int) else 1)
    return result


def _abort(code):
    import sys
    import time
    sys.stdout.flush()
    sys.stderr.flush()
    # mpiexec forwards a rank's output asynchronously: aborting at once can kill the forwarding
    # process before the error message reaches the user's terminal.
    time.sleep(0.5)
    _mpi().COMM_WORLD.Abort(code)
