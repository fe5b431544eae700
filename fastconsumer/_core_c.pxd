# The compiled core's interface: the ring buffer, the offset tracker and the ordering scheduler.
from cpython.ref cimport PyObject
from libc.stdint cimport int64_t, uint8_t, uint64_t


cdef class RingBuffer:
    cdef list _items
    cdef Py_ssize_t _capacity
    cdef Py_ssize_t _head
    cdef Py_ssize_t _count

    cpdef bint push(self, object item) except -1
    cpdef Py_ssize_t extend(self, list items, Py_ssize_t start=*) except -1
    cpdef object pop(self)
    cpdef list drain(self)


cdef class _Window:
    cdef int64_t *offsets
    cdef uint8_t *done
    cdef Py_ssize_t head
    cdef Py_ssize_t count
    cdef Py_ssize_t mask
    cdef Py_ssize_t n_acked
    cdef int64_t last
    cdef int64_t reported
    cdef bint moved

    cdef int track(self, int64_t offset) except -1
    cdef bint ack(self, int64_t offset)
    cdef int64_t safe(self)


cdef class OffsetTracker:
    cdef dict _windows
    cdef Py_ssize_t _held  # entries of all windows: window()
    cdef object _last_topic
    cdef int64_t _last_partition
    cdef _Window _last_window

    cdef _Window _find(self, object topic, int64_t partition)
    cpdef track(self, object topic, int64_t partition, int64_t offset)
    cdef tuple _restart(self, object topic, int64_t partition, _Window old, int64_t offset)
    cpdef list track_messages(self, object messages)
    cpdef bint ack(self, object topic, int64_t partition, int64_t offset)
    cdef int _check(self, object topic, int64_t partition, int64_t offset) except -1
    cpdef bint ack_message(self, object msg)
    cpdef list committable(self)


cdef struct _Lane:
    Py_hash_t lane
    Py_ssize_t first  # the node of the first message waiting behind the one handed out; -1: none
    Py_ssize_t last
    uint64_t stamp  # the done_batch() call that released it last
    bint used


cdef class Scheduler:
    cdef int _ordering
    cdef Py_ssize_t _capacity
    cdef RingBuffer _ready
    cdef OffsetTracker _tracker
    cdef _Lane *_table  # the lanes held: a power of two of slots, at most half used
    cdef Py_ssize_t _mask
    cdef Py_ssize_t _held  # slots used
    cdef uint64_t _stamp
    cdef list _nodes  # the messages waiting, by node
    cdef Py_ssize_t *_next  # per node: the next node of its lane's list, or of the free list; -1: none
    cdef Py_ssize_t _free_node
    cdef Py_ssize_t _waiting

    cdef Py_hash_t _lane_of(self, object msg) except -1
    cdef Py_hash_t _lane(self, object topic, object partition, object key) except -1
    cdef Py_ssize_t _slot(self, Py_hash_t lane)
    cdef int _hold(self, Py_hash_t lane) except -1
    cdef int _grow(self) except -1
    cdef void _let_go(self, Py_ssize_t i)
    cdef void _wait(self, Py_ssize_t i, object msg)
    cdef object _next_waiting(self, Py_ssize_t i)
    cdef int _release(self, Py_hash_t lane) except -1
    cdef int _release_slot(self, Py_ssize_t i) except -1
    cpdef bint push(self, object msg) except -1
    cpdef Py_ssize_t extend(self, list messages, Py_ssize_t start=*) except -1
    cpdef object pop(self)
    cpdef list pop_batch(self, Py_ssize_t max_messages)
    cpdef done(self, object msg)
    cpdef release(self, object msg)
    cpdef done_batch(self, list messages)
