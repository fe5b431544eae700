# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled core: ring buffer, offset tracker and ordering scheduler.

Every message passes through these three on its way to a handler and back, so they are kept in C.
``fastconsumer._core_py`` is the behaviour-identical pure-Python twin (same results, same exceptions:
tests/test_core_differential.py runs both side by side); ``_core_c.pyi`` is this module's stub.
"""

from types import GenericAlias

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject_Hash, PyTypeObject, Py_TYPE
from cpython.ref cimport PyObject, Py_XDECREF
from libc.stdint cimport INT64_MAX, int32_t, uint64_t
from libc.string cimport memset

__all__ = (
    "ORDERINGS",
    "OffsetTracker",
    "Resume",
    "RingBuffer",
    "Scheduler",
    "drive",
    "first_error",
    "note_last_offsets",
)

ORDERINGS = ("key", "partition", "unordered")

cdef enum:
    KEY = 0
    PARTITION = 1
    UNORDERED = 2


# -- A Message's fields, read in place
#
# Every message is looked at three times on its way (tracked, scheduled, done), four fields each time: as
# method calls that is a dozen attribute lookups and calls per message, a quarter of the engine's cost.
# confluent_kafka.Message is a C struct; where its topic, key, partition and offset sit is found here once,
# by looking for them in two probe messages, and checked: with any doubt (another layout, another type, a
# subclass, a field unset) these fall back to the method calls, which give the same values.

cdef PyTypeObject *_MESSAGE = NULL  # the type whose fields are read in place, once the probe found them
cdef Py_ssize_t _AT_TOPIC = 0, _AT_KEY = 0, _AT_PARTITION = 0, _AT_OFFSET = 0, _AT_ERROR = 0


cdef inline PyObject *_field(object msg, Py_ssize_t at):
    return (<PyObject **> ((<char *> <PyObject *> msg) + at))[0]


cdef inline int32_t _partition_field(object msg):
    return (<int32_t *> ((<char *> <PyObject *> msg) + _AT_PARTITION))[0]


cdef inline int64_t _offset_field(object msg):
    return (<int64_t *> ((<char *> <PyObject *> msg) + _AT_OFFSET))[0]


cdef inline bint _in_place(object msg):
    """Whether msg's fields may be read in place: a confluent Message with partition and offset set."""
    return (
        Py_TYPE(msg) == _MESSAGE
        and _field(msg, _AT_TOPIC) != NULL
        and _partition_field(msg) >= 0
        and _offset_field(msg) >= 0
    )


cdef inline bint _has_error(object msg):
    cdef PyObject *error = _field(msg, _AT_ERROR)
    return error != NULL and error != <PyObject *> None


cdef inline object _key_field(object msg):
    cdef PyObject *key = _field(msg, _AT_KEY)
    return <object> key if key != NULL else None


cdef Py_ssize_t _find(object probe, Py_ssize_t size, Py_ssize_t width, int64_t value):
    """The one offset past the object header of ``probe`` holding ``value`` (a pointer or an integer
    ``width`` bytes wide, aligned), or -1: none, or more than one."""
    cdef char *base = <char *> <PyObject *> probe
    cdef Py_ssize_t at, found = -1
    cdef int64_t here
    for at in range(sizeof(PyObject), size - width + 1, width):
        if width == 4:
            here = (<int32_t *> (base + at))[0]
        else:
            here = <int64_t> (<Py_ssize_t *> (base + at))[0]
        if here == value:
            if found >= 0:
                return -1
            found = at
    return found


cdef int _probe_message_layout() except -1:
    global _MESSAGE, _AT_TOPIC, _AT_KEY, _AT_PARTITION, _AT_OFFSET, _AT_ERROR
    from confluent_kafka import KafkaError, Message

    if sizeof(void *) != 8:
        return 0
    topic, key = "fastconsumer-probe-" + "topic", b"fastconsumer-probe-" + b"key"
    error = KafkaError(KafkaError._PARTITION_EOF)
    probe = Message(topic, 1234567, 98765432101, key, b"", None, error, (1, 0))
    size = Message.__basicsize__
    _AT_TOPIC = _find(probe, size, 8, <int64_t> <Py_ssize_t> <PyObject *> topic)
    _AT_KEY = _find(probe, size, 8, <int64_t> <Py_ssize_t> <PyObject *> key)
    _AT_PARTITION = _find(probe, size, 4, 1234567)
    _AT_OFFSET = _find(probe, size, 8, 98765432101)
    _AT_ERROR = _find(probe, size, 8, <int64_t> <Py_ssize_t> <PyObject *> error)
    if min(_AT_TOPIC, _AT_KEY, _AT_PARTITION, _AT_OFFSET, _AT_ERROR) < 0:
        return 0
    _MESSAGE = <PyTypeObject *> Message
    # Other messages, read through the accessors the hot path uses, must give what their methods give.
    for other in (Message("t", 7, 12345678901234, None, None, None, None, (1, 0)), Message("u", 0, 0, b"", b"")):
        if not (
            _in_place(other)
            and <object> _field(other, _AT_TOPIC) is other.topic()
            and _key_field(other) is other.key()
            and _partition_field(other) == other.partition()
            and _offset_field(other) == other.offset()
            and not _has_error(other)
            and other.error() is None
        ):
            _MESSAGE = NULL
            return 0
    return 0


_probe_message_layout()


def _reads_in_place():
    """Whether Message fields are read in place (for the tests)."""
    return _MESSAGE != NULL


def first_error(list messages not None):
    """The index of the first of ``messages`` that carries an error (an event, not a message), or -1."""
    cdef Py_ssize_t i
    for i in range(len(messages)):
        msg = messages[i]
        if Py_TYPE(msg) == _MESSAGE:
            if _has_error(msg):
                return i
        elif msg.error() is not None:
            return i
    return -1


def note_last_offsets(list messages not None, dict into not None):
    """``into[(topic, partition)] = offset`` of each partition's last message among ``messages``, as one
    assignment per message in order would leave it; once per run of a partition, here."""
    cdef Py_ssize_t i, n = len(messages)
    cdef PyObject *topic = NULL
    cdef int32_t partition = -1
    cdef int64_t offset = -1
    for i in range(n):
        msg = messages[i]
        if _in_place(msg):
            if topic != NULL and (
                _partition_field(msg) != partition
                or (_field(msg, _AT_TOPIC) != topic and <object> _field(msg, _AT_TOPIC) != <object> topic)
            ):  # (each message from librdkafka has a topic string of its own: compared by value)
                into[(<object> topic, partition)] = offset
            topic = _field(msg, _AT_TOPIC)
            partition = _partition_field(msg)
            offset = _offset_field(msg)
            continue
        if topic != NULL:
            into[(<object> topic, partition)] = offset
            topic = NULL
        into[(msg.topic(), msg.partition())] = msg.offset()
    if topic != NULL:
        into[(<object> topic, partition)] = offset


cdef class RingBuffer:
    """Bounded FIFO: ``push`` refuses instead of growing, so whoever fills it feels the back-pressure."""

    def __cinit__(self, Py_ssize_t capacity):
        if capacity < 1:
            raise ValueError(f"ring buffer capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._items = [None] * capacity
        self._head = 0
        self._count = 0

    def __class_getitem__(cls, item):
        return GenericAlias(cls, item)

    @property
    def capacity(self):
        return self._capacity

    def __len__(self):
        return self._count

    def full(self):
        return self._count >= self._capacity

    cpdef bint push(self, object item) except -1:
        cdef Py_ssize_t i
        if item is None:
            raise TypeError("ring buffer items cannot be None")
        if self._count >= self._capacity:
            return False
        i = self._head + self._count
        if i >= self._capacity:
            i -= self._capacity
        self._items[i] = item
        self._count += 1
        return True

    cpdef Py_ssize_t extend(self, list items, Py_ssize_t start=0) except -1:
        """Push ``items[start:]`` until full; return how many were taken."""
        cdef Py_ssize_t n, room, take, k, i
        if items is None:
            raise TypeError("Argument 'items' has incorrect type (expected list, got NoneType)")
        if start < 0:  # items[k] below is not bounds-checked
            raise ValueError(f"start must be >= 0, got {start}")
        n = len(items)
        room = self._capacity - self._count
        take = n - start
        if take > room:
            take = room
        if take <= 0:
            return 0
        for k in range(start, start + take):
            if items[k] is None:
                raise TypeError("ring buffer items cannot be None")
        i = self._head + self._count
        for k in range(start, start + take):
            if i >= self._capacity:
                i -= self._capacity
            self._items[i] = items[k]
            i += 1
        self._count += take
        return take

    cpdef object pop(self):
        """Oldest item, or None when empty."""
        cdef object item
        if self._count == 0:
            return None
        item = self._items[self._head]
        self._items[self._head] = None
        self._head += 1
        if self._head == self._capacity:
            self._head = 0
        self._count -= 1
        return item

    cpdef list drain(self):
        cdef list out = []
        cdef object item
        while self._count:
            out.append(self.pop())
        return out


cdef class _Window:
    """One partition's in-flight offsets in order, each with its acked flag; acked ones leave at the head.

    A power-of-two ring of C integers: memory follows the in-flight window, not the partition's offsets.
    """

    def __cinit__(self, int64_t offset):
        self.mask = 63
        self.offsets = <int64_t *> PyMem_Malloc(64 * sizeof(int64_t))
        self.done = <uint8_t *> PyMem_Malloc(64 * sizeof(uint8_t))
        if self.offsets == NULL or self.done == NULL:
            raise MemoryError()
        self.head = 0
        self.count = 0
        self.n_acked = 0
        self.last = offset - 1
        self.reported = offset
        self.moved = False

    def __dealloc__(self):
        PyMem_Free(self.offsets)
        PyMem_Free(self.done)

    cdef int track(self, int64_t offset) except -1:
        cdef Py_ssize_t cap = self.mask + 1
        cdef Py_ssize_t k, i
        cdef int64_t *offsets
        cdef uint8_t *done
        if self.count == cap:
            offsets = <int64_t *> PyMem_Malloc(2 * cap * sizeof(int64_t))
            done = <uint8_t *> PyMem_Malloc(2 * cap * sizeof(uint8_t))
            if offsets == NULL or done == NULL:
                PyMem_Free(offsets)
                PyMem_Free(done)
                raise MemoryError()
            for k in range(self.count):
                i = (self.head + k) & self.mask
                offsets[k] = self.offsets[i]
                done[k] = self.done[i]
            PyMem_Free(self.offsets)
            PyMem_Free(self.done)
            self.offsets = offsets
            self.done = done
            self.head = 0
            self.mask = 2 * cap - 1
        i = (self.head + self.count) & self.mask
        self.offsets[i] = offset
        self.done[i] = 0
        self.count += 1
        self.last = offset
        return 0

    cdef bint ack(self, int64_t offset):
        cdef Py_ssize_t lo, hi, mid, i
        cdef int64_t head_offset
        if self.count == 0:
            return False
        head_offset = self.offsets[self.head]
        if offset < head_offset or offset > self.last:
            return False
        # Offsets are usually contiguous: try the direct slot before searching.
        lo = <Py_ssize_t> (offset - head_offset)
        if lo < self.count and self.offsets[(self.head + lo) & self.mask] == offset:
            i = (self.head + lo) & self.mask
        else:
            lo = 0
            hi = self.count - 1
            i = -1
            while lo <= hi:
                mid = (lo + hi) >> 1
                if self.offsets[(self.head + mid) & self.mask] < offset:
                    lo = mid + 1
                elif self.offsets[(self.head + mid) & self.mask] > offset:
                    hi = mid - 1
                else:
                    i = (self.head + mid) & self.mask
                    break
            if i < 0:
                return False
        if self.done[i]:
            return True
        if i != self.head:
            self.done[i] = 1
            self.n_acked += 1
            return True
        self.head = (self.head + 1) & self.mask
        self.count -= 1
        while self.count and self.done[self.head]:
            self.head = (self.head + 1) & self.mask
            self.count -= 1
            self.n_acked -= 1
        self.moved = True
        return True

    cdef int64_t safe(self):
        if self.count:
            return self.offsets[self.head]
        return self.last + 1


cdef class OffsetTracker:
    """Per-partition bookkeeping of which offsets may be committed.

    The committable offset of a partition is the lowest tracked offset not yet acked (or one past the last
    tracked offset when all are acked): committing it never skips a message that was not handled.

    An offset at or below the last one tracked for its partition (an offset reset, a re-created topic)
    restarts that partition's window there: the old one is discarded, as ``drop()`` then ``track()`` would.
    """

    def __cinit__(self):
        self._windows = {}
        self._held = 0
        self._last_topic = None
        self._last_partition = -1
        self._last_window = None

    cdef _Window _find(self, object topic, int64_t partition):
        # Messages arrive in runs from one partition: remember the last window looked up.
        if self._last_window is not None and partition == self._last_partition and topic == self._last_topic:
            return self._last_window
        window = self._windows.get((topic, partition))
        if window is not None:
            self._last_topic = topic
            self._last_partition = partition
            self._last_window = window
        return window

    cpdef track(self, object topic, int64_t partition, int64_t offset):
        """Track an offset fetched: None, or ``(topic, partition, last tracked, offset)`` when it did not
        come after the last one tracked and restarted the partition's window."""
        cdef _Window window
        if offset < 0 or offset == INT64_MAX:  # Kafka's offsets; the window computes offset - 1 and + 1
            raise ValueError(f"offset {offset} of {topic}[{partition}] is out of range 0..{INT64_MAX - 1}")
        window = self._find(topic, partition)
        if window is None:
            window = _Window(offset)
            self._windows[(topic, partition)] = window
            self._last_topic = topic
            self._last_partition = partition
            self._last_window = window
        elif offset <= window.last:
            return self._restart(topic, partition, window, offset)
        window.track(offset)
        self._held += 1

    cdef tuple _restart(self, object topic, int64_t partition, _Window old, int64_t offset):
        # The twin's _restart() is this code, line for line.
        cdef _Window window = _Window(offset)
        window.track(offset)
        window.reported = old.reported  # committable() reports the new safe offset if it differs
        window.moved = True
        del self._windows[(topic, partition)]  # as drop() then track(): the partition comes last
        self._windows[(topic, partition)] = window
        self._last_topic = topic
        self._last_partition = partition
        self._last_window = window
        self._held += 1 - old.count
        return (topic, partition, old.last, offset)

    cpdef list track_messages(self, object messages):
        """``track()`` each message; the list of the restarts among them (empty, normally)."""
        cdef list restarts = []
        cdef object restarted
        for msg in messages:
            if _in_place(msg):
                restarted = self.track(<object> _field(msg, _AT_TOPIC), _partition_field(msg), _offset_field(msg))
            else:
                restarted = self.track(msg.topic(), msg.partition(), msg.offset())
            if restarted is not None:
                restarts.append(restarted)
        return restarts

    cpdef bint ack(self, object topic, int64_t partition, int64_t offset):
        """Mark a tracked offset handled; False if it is not tracked (e.g. its partition was dropped)."""
        cdef _Window window = self._find(topic, partition)
        cdef Py_ssize_t count
        cdef bint acked
        if window is None:
            return False
        count = window.count
        acked = window.ack(offset)
        self._held -= count - window.count
        return acked

    cdef int _check(self, object topic, int64_t partition, int64_t offset) except -1:
        # What ack() converts and looks up, the same errors, without acking (Scheduler.release()).
        self._find(topic, partition)
        return 0

    cpdef bint ack_message(self, object msg):
        if _in_place(msg):
            return self.ack(<object> _field(msg, _AT_TOPIC), _partition_field(msg), _offset_field(msg))
        return self.ack(msg.topic(), msg.partition(), msg.offset())

    cpdef list committable(self):
        """``(topic, partition, offset)`` for each partition whose safe offset moved since the last call."""
        cdef list out = []
        cdef _Window window
        cdef int64_t safe
        for key, value in self._windows.items():
            window = <_Window> value
            if window.moved:
                window.moved = False
                safe = window.safe()
                if safe != window.reported:
                    window.reported = safe
                    out.append((key[0], key[1], safe))
        return out

    def positions(self):
        """The safe offset of every tracked partition, moved or not: what a final commit writes, so a
        partition fetched but not handled resumes there, whatever auto.offset.reset says."""
        cdef list out = []
        cdef _Window window
        for key, value in self._windows.items():
            window = <_Window> value
            out.append((key[0], key[1], window.safe()))
        return out

    def frontiers(self):
        """``(topic, partition, highest acked offset + 1)`` for each partition with a gap below its highest
        acked offset: the messages that must still be handled for a commit to cover all acked ones."""
        cdef list out = []
        cdef _Window window
        cdef Py_ssize_t k, i
        for key, value in self._windows.items():
            window = <_Window> value
            if window.n_acked:
                for k in range(window.count - 1, -1, -1):
                    i = (window.head + k) & window.mask
                    if window.done[i]:
                        out.append((key[0], key[1], window.offsets[i] + 1))
                        break
        return out

    def done(self, topic, int64_t partition):
        """The acked offsets above the partition's safe offset, ascending: handled, yet not covered by a
        commit of the safe offset (what a commit's metadata tells the next owner)."""
        cdef _Window window = self._windows.get((topic, partition))
        cdef list out = []
        cdef Py_ssize_t k, i
        if window is None or not window.n_acked:
            return out
        for k in range(window.count):
            i = (window.head + k) & window.mask
            if window.done[i]:
                out.append(window.offsets[i])
        return out

    def pending(self, topic, int64_t partition):
        """Offsets tracked and not yet acked."""
        cdef _Window window = self._windows.get((topic, partition))
        return window.count - window.n_acked if window is not None else 0

    def window_size(self, topic, int64_t partition):
        """Entries held for a partition: bounded by its in-flight window, whatever its offsets."""
        cdef _Window window = self._windows.get((topic, partition))
        return window.count if window is not None else 0

    def window(self):
        """Entries held across all partitions: the sum of their ``window_size()``, kept as a running count."""
        return self._held

    def drop(self, topic, int64_t partition):
        cdef _Window window = self._windows.pop((topic, partition), None)
        if window is not None:
            self._held -= window.count
        self._last_window = None
        self._last_topic = None

    def partitions(self):
        return list(self._windows)

    def __len__(self):
        cdef Py_ssize_t total = 0
        cdef _Window window
        for value in self._windows.values():
            window = <_Window> value
            total += window.count - window.n_acked
        return total


# A lane is hash((topic, partition)), or hash((topic, partition, key)) for a message with a key under key
# ordering, computed here without building the tuple: CPython's tuple hash (Objects/tupleobject.c, xxHash
# based) over the items' hashes. The twin calls hash() on the tuple and gets the same integer, so the two
# cores put the same messages in the same lanes, even where hashes collide (which only orders more strictly).
cdef uint64_t XXPRIME_1 = 11400714785074694791ULL
cdef uint64_t XXPRIME_2 = 14029467366897019727ULL
cdef uint64_t XXPRIME_5 = 2870177450012600261ULL


cdef inline uint64_t _xx_round(uint64_t acc, Py_hash_t item):
    acc += <uint64_t> item * XXPRIME_2
    acc = (acc << 31) | (acc >> 33)
    return acc * XXPRIME_1


cdef inline Py_hash_t _lane_hash(object topic, object partition, object key) except -1:
    return _lane_hashed(topic, PyObject_Hash(partition), key)


cdef inline Py_hash_t _lane_hashed(object topic, Py_hash_t partition_hash, object key) except -1:
    cdef Py_hash_t h = PyObject_Hash(topic)
    cdef uint64_t acc = _xx_round(XXPRIME_5, h)
    acc = _xx_round(acc, partition_hash)
    if key is None:
        acc += 2 ^ (XXPRIME_5 ^ 3527539)
    else:
        h = PyObject_Hash(key)
        acc = _xx_round(acc, h)
        acc += 3 ^ (XXPRIME_5 ^ 3527539)
    if acc == <uint64_t> -1:
        return 1546275796
    return <Py_hash_t> acc


cdef enum:
    _MIN_LANES = 64  # slots of a scheduler's lane table at first; it doubles past half full


def _lane(topic, partition, key):
    """The lane of (topic, partition, key): what the twin's ``_lane`` returns (for the tests)."""
    return _lane_hash(topic, partition, key)


cdef class Scheduler:
    """Decides which fetched message may run next under an ordering.

    ``key``: one message per (partition, key) at a time, in offset order; a null key orders like its
    partition. ``partition``: one message per partition at a time. ``unordered``: anything, at once.
    Runnable messages wait in a ring buffer; messages held back by a busy lane wait in that lane.

    In C, since every message passes here two or three times: the lanes held are a hash table (open
    addressing, linear probing) keyed by the lane's hash, and the messages waiting in a lane a linked list
    through a pool of ``capacity`` nodes (what waits never exceeds it). No Python int, dict or deque per
    message.
    """

    def __cinit__(self, object ordering="key", Py_ssize_t capacity=10000, OffsetTracker tracker=None):
        cdef Py_ssize_t k
        if not isinstance(ordering, str) or ordering not in ORDERINGS:
            raise ValueError(f"ordering must be one of {', '.join(ORDERINGS)}; got {ordering!r}")
        self._ordering = ORDERINGS.index(ordering)
        self._capacity = capacity
        self._ready = RingBuffer(capacity)
        self._waiting = 0
        self._tracker = tracker  # done() acks there: one call per finished message, not two
        self._table = <_Lane *> PyMem_Malloc(_MIN_LANES * sizeof(_Lane))
        self._next = <Py_ssize_t *> PyMem_Malloc(capacity * sizeof(Py_ssize_t))
        if self._table == NULL or self._next == NULL:
            raise MemoryError()
        memset(self._table, 0, _MIN_LANES * sizeof(_Lane))
        self._mask = _MIN_LANES - 1
        self._held = 0
        self._stamp = 0
        self._nodes = [None] * capacity
        for k in range(capacity):  # the free nodes, a list through _next
            self._next[k] = k + 1 if k + 1 < capacity else -1
        self._free_node = 0 if capacity else -1

    def __dealloc__(self):
        PyMem_Free(self._table)
        PyMem_Free(self._next)

    @property
    def ordering(self):
        return ORDERINGS[self._ordering]

    @property
    def capacity(self):
        return self._capacity

    def __len__(self):
        """Messages held, runnable or waiting (not those handed out)."""
        return self._ready._count + self._waiting

    def ready(self):
        return self._ready._count

    # -- lanes: the hash table of the lanes held

    cdef Py_hash_t _lane_of(self, object msg) except -1:
        if _in_place(msg):  # a partition's hash is the partition, a non-negative int
            return _lane_hashed(
                <object> _field(msg, _AT_TOPIC),
                _partition_field(msg),
                _key_field(msg) if self._ordering == KEY else None,
            )
        return self._lane(msg.topic(), msg.partition(), msg.key() if self._ordering == KEY else None)

    cdef Py_hash_t _lane(self, object topic, object partition, object key) except -1:
        return _lane_hash(topic, partition, key)

    cdef Py_ssize_t _slot(self, Py_hash_t lane):
        """The slot of a lane held, or -1."""
        cdef Py_ssize_t i = <Py_ssize_t> (<size_t> lane & <size_t> self._mask)
        while self._table[i].used:
            if self._table[i].lane == lane:
                return i
            i = (i + 1) & self._mask
        return -1

    cdef int _hold(self, Py_hash_t lane) except -1:
        """Hold a lane not held, with nobody waiting."""
        cdef Py_ssize_t i
        if 2 * (self._held + 1) > self._mask + 1:
            self._grow()
        i = <Py_ssize_t> (<size_t> lane & <size_t> self._mask)
        while self._table[i].used:
            i = (i + 1) & self._mask
        self._table[i].lane = lane
        self._table[i].first = -1
        self._table[i].last = -1
        self._table[i].stamp = 0
        self._table[i].used = True
        self._held += 1
        return 0

    cdef int _grow(self) except -1:
        cdef Py_ssize_t size = 2 * (self._mask + 1), i, j
        cdef _Lane *old = self._table
        cdef _Lane *table = <_Lane *> PyMem_Malloc(size * sizeof(_Lane))
        if table == NULL:
            raise MemoryError()
        memset(table, 0, size * sizeof(_Lane))
        for i in range(self._mask + 1):
            if old[i].used:
                j = <Py_ssize_t> (<size_t> old[i].lane & <size_t> (size - 1))
                while table[j].used:
                    j = (j + 1) & (size - 1)
                table[j] = old[i]
        self._table = table
        self._mask = size - 1
        PyMem_Free(old)
        return 0

    cdef void _let_go(self, Py_ssize_t i):
        """Let go of the lane in slot ``i`` (nobody waits in it): later slots of its probe run move up."""
        cdef Py_ssize_t j = i, home
        while True:
            j = (j + 1) & self._mask
            if not self._table[j].used:
                break
            home = <Py_ssize_t> (<size_t> self._table[j].lane & <size_t> self._mask)
            if (i < home <= j) if i <= j else (i < home or home <= j):
                continue  # its home lies after the hole: it stays
            self._table[i] = self._table[j]
            i = j
        self._table[i].used = False
        self._held -= 1

    # -- waiting: each lane's messages behind the one handed out, in order

    cdef inline void _wait(self, Py_ssize_t i, object msg):
        cdef Py_ssize_t node = self._free_node
        self._free_node = self._next[node]
        self._nodes[node] = msg
        self._next[node] = -1
        if self._table[i].first < 0:
            self._table[i].first = node
        else:
            self._next[self._table[i].last] = node
        self._table[i].last = node
        self._waiting += 1

    cdef inline object _next_waiting(self, Py_ssize_t i):
        """The first message waiting in the lane of slot ``i``, taken (the lane must have one)."""
        cdef Py_ssize_t node = self._table[i].first
        cdef object msg = self._nodes[node]
        self._nodes[node] = None
        self._table[i].first = self._next[node]
        if self._table[i].first < 0:
            self._table[i].last = -1
        self._next[node] = self._free_node
        self._free_node = node
        self._waiting -= 1
        return msg

    # -- the operations

    cpdef bint push(self, object msg) except -1:
        cdef Py_hash_t lane
        cdef Py_ssize_t i
        if self._ready._count + self._waiting >= self._capacity:
            return False
        if self._ordering == UNORDERED:
            return self._ready.push(msg)
        lane = self._lane_of(msg)
        i = self._slot(lane)
        if i < 0:  # a free lane: it runs now, and holds the lane
            self._hold(lane)
            self._ready.push(msg)
        else:
            self._wait(i, msg)
        return True

    cpdef Py_ssize_t extend(self, list messages, Py_ssize_t start=0) except -1:
        """Push ``messages[start:]`` until full; return how many were taken."""
        cdef Py_ssize_t n, i = start
        if messages is None:
            raise TypeError("Argument 'messages' has incorrect type (expected list, got NoneType)")
        if start < 0:  # messages[i] below is not bounds-checked
            raise ValueError(f"start must be >= 0, got {start}")
        if self._ordering == UNORDERED:
            return self._ready.extend(messages, start)
        n = len(messages)
        while i < n and self.push(messages[i]):
            i += 1
        return i - start

    cpdef object pop(self):
        """The next runnable message, or None."""
        return self._ready.pop()

    cpdef list pop_batch(self, Py_ssize_t max_messages):
        """Up to ``max_messages`` messages runnable together: each lane's waiting successors come along in
        order, since one handler call takes them in sequence."""
        cdef list batch = []
        cdef object msg
        cdef Py_ssize_t i
        while len(batch) < max_messages:
            msg = self._ready.pop()
            if msg is None:
                break
            batch.append(msg)
            if self._ordering != UNORDERED:
                i = self._slot(self._lane_of(msg))
                if i < 0:  # its lane was released already (done() before it was handed out)
                    continue
                while self._table[i].first >= 0 and len(batch) < max_messages:
                    batch.append(self._next_waiting(i))
        return batch

    cpdef done(self, object msg):
        """A handed-out message is finished: ack its offset in the tracker, and release its lane so the next
        message waiting in it becomes runnable."""
        cdef object topic, partition
        cdef int32_t partition_field
        if _in_place(msg):
            topic = <object> _field(msg, _AT_TOPIC)
            partition_field = _partition_field(msg)
            if self._tracker is not None:
                self._tracker.ack(topic, partition_field, _offset_field(msg))
            if self._ordering == KEY:
                self._release(_lane_hashed(topic, partition_field, _key_field(msg)))
            elif self._ordering == PARTITION:
                self._release(_lane_hashed(topic, partition_field, None))
            return
        topic = msg.topic()
        partition = msg.partition()
        if self._tracker is not None:
            self._tracker.ack(topic, partition, msg.offset())
        if self._ordering == KEY:
            self._release(self._lane(topic, partition, msg.key()))
        elif self._ordering == PARTITION:
            self._release(self._lane(topic, partition, None))

    cpdef release(self, object msg):
        """A handed-out message is given up (its partition was revoked): release its lane as ``done()`` does,
        without acking its offset, which stays uncommitted for the partition's next owner."""
        cdef object topic = msg.topic()
        cdef object partition = msg.partition()
        if self._tracker is not None:
            self._tracker._check(topic, partition, msg.offset())  # done()'s argument errors, alike
        if self._ordering == KEY:
            self._release(self._lane(topic, partition, msg.key()))
        elif self._ordering == PARTITION:
            self._release(self._lane(topic, partition, None))

    cdef int _release(self, Py_hash_t lane) except -1:
        self._release_slot(self._slot(lane))
        return 0

    cdef int _release_slot(self, Py_ssize_t i) except -1:
        if i < 0:
            return 0
        if self._table[i].first < 0:
            self._let_go(i)
        else:
            self._ready.push(self._next_waiting(i))
        return 0

    cpdef done_batch(self, list messages):
        """``done`` for a batch handed out by ``pop_batch``: each offset acked, each lane released once."""
        cdef Py_ssize_t i
        cdef uint64_t stamp
        if messages is None:
            raise TypeError("Argument 'messages' has incorrect type (expected list, got NoneType)")
        if self._tracker is not None:
            for msg in messages:
                self._tracker.ack_message(msg)
        if self._ordering == UNORDERED:
            return
        self._stamp += 1  # a lane released by this call is stamped with it: not released twice
        stamp = self._stamp
        for msg in messages:
            i = self._slot(self._lane_of(msg))
            if i < 0 or self._table[i].stamp == stamp:
                continue
            if self._table[i].first < 0:
                self._let_go(i)
            else:  # its next message runs; the lane stays held, by that one
                self._ready.push(self._next_waiting(i))
                self._table[i].stamp = stamp

    def drop(self, topic, int64_t partition, int64_t start=0):
        """Forget the held messages of a partition at or above offset ``start`` (all by default: it was
        revoked; a revoke filling its gaps keeps those below); return how many."""
        cdef Py_ssize_t dropped = 0, i, node, before, after
        cdef list kept = []
        cdef list left
        # The twin's drop() is this code. A lane's messages come in offset order: those kept are the lane's
        # first ones, so what stays runnable stays at the head of its lane.
        for i in range(self._mask + 1):  # waiting: they leave their lanes
            if not self._table[i].used or self._table[i].first < 0:
                continue
            left = []
            before = 0
            while self._table[i].first >= 0:
                msg = self._next_waiting(i)
                before += 1
                if msg.partition() != partition or msg.topic() != topic or msg.offset() < start:
                    left.append(msg)
            for msg in left:
                self._wait(i, msg)
            dropped += before - len(left)
        for msg in self._ready.drain():  # runnable: each holds its lane, which passes on as if it had run
            if msg.partition() != partition or msg.topic() != topic or msg.offset() < start:
                kept.append(msg)
                continue
            dropped += 1
            if self._ordering != UNORDERED:
                i = self._slot(self._lane_of(msg))
                if i < 0:
                    continue
                if self._table[i].first >= 0:  # another partition's lane with the same hash: it passes on
                    kept.append(self._next_waiting(i))
                else:
                    self._let_go(i)
        self._ready.extend(kept)
        return dropped


cdef extern from "Python.h":
    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT
    PySendResult PyIter_Send(object iter, object arg, PyObject **presult)
    PyObject *PyObject_CallOneArg(object callable, object arg)  # NULL with an exception set: no try block


def drive(Scheduler scheduler not None, object handler, Py_ssize_t budget):
    """Start up to ``budget`` runnable messages, stepping each handler coroutine once in place.

    Handlers that finish without suspending (most, when they only compute) are done here, with no Task
    and no trip through the event loop. Returns ``(finished, pending)``: ``pending`` is None, or
    ``(msg, coro, first)`` for the first coroutine that suspended (``first`` is what it yielded; await
    ``Resume(coro, first)`` to go on with it), or ``(msg, None, exc)`` for a handler that raised, any
    BaseException (a CancelledError, a SystemExit) included: the message is neither done nor lost.
    """
    cdef Py_ssize_t finished = 0
    cdef PyObject *result = NULL
    cdef PySendResult status
    cdef object msg, coro, value
    while finished < budget:
        msg = scheduler._ready.pop()
        if msg is None:
            break
        result = PyObject_CallOneArg(handler, msg)
        if result == NULL:
            return finished, (msg, None, _raised())
        coro = <object> result
        Py_XDECREF(result)
        status = PyIter_Send(coro, None, &result)
        if status == PYGEN_RETURN:
            Py_XDECREF(result)
            scheduler.done(msg)
            finished += 1
            continue
        if status == PYGEN_NEXT:
            value = <object> result
            Py_XDECREF(result)
            return finished, (msg, coro, value)
        return finished, (msg, None, _raised())
    return finished, None


cdef object _raised():
    """The exception a C call left set, whatever it is, taken (off the hot path: no try block there)."""
    try:
        raise_current()
    except BaseException as exc:
        return exc


cdef int raise_current() except -1:
    # The C call left an exception set; returning -1 makes Cython raise it.
    return -1


cdef class Resume:
    """Awaits the rest of a coroutine that ``drive`` already stepped once: hands its first yield to the
    awaiting Task, then forwards everything (results, exceptions, cancellation) to the coroutine."""

    cdef object _coro
    cdef object _first
    cdef bint _started

    def __cinit__(self, object coro, object first):
        self._coro = coro
        self._first = first
        self._started = False

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        # What the awaiting Task calls on each wake-up (it sends None): in C, no method looked up.
        cdef PyObject *result = NULL
        cdef PySendResult status
        if not self._started:
            self._started = True
            return self._first
        status = PyIter_Send(self._coro, None, &result)
        value = <object> result if result != NULL else None
        Py_XDECREF(result)
        if status == PYGEN_NEXT:
            return value
        if status == PYGEN_RETURN:
            raise StopIteration(value)
        raise_current()

    def send(self, value):
        if not self._started:
            self._started = True
            return self._first
        return self._coro.send(value)

    def throw(self, *args):
        self._started = True
        return self._coro.throw(*args)

    def close(self):
        self._coro.close()
