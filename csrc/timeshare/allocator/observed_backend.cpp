#include "timeshare/allocator/observed_backend.h"

namespace timeshare {

ObservedBackend::ObservedBackend(std::unique_ptr<device::Backend> inner)
    : inner_(std::move(inner)) {}

device::Status ObservedBackend::reserve(std::size_t bytes, void** out) {
  const device::Status s = inner_->reserve(bytes, out);
  if (s == device::Status::kOk) add(reinterpret_cast<std::uintptr_t>(*out), bytes, SegmentAction::kAlloc);
  return s;
}

device::Status ObservedBackend::release(void* ptr, std::size_t bytes) {
  const device::Status s = inner_->release(ptr, bytes);
  if (s == device::Status::kOk) remove(reinterpret_cast<std::uintptr_t>(ptr), bytes, SegmentAction::kFree);
  return s;
}

device::Status ObservedBackend::map(void* addr, std::size_t bytes) {
  const device::Status s = inner_->map(addr, bytes);
  if (s == device::Status::kOk) add(reinterpret_cast<std::uintptr_t>(addr), bytes, SegmentAction::kMap);
  return s;
}

device::Status ObservedBackend::map_alias(void* addr, const void* from, std::size_t bytes) {
  const device::Status s = inner_->map_alias(addr, from, bytes);
  if (s == device::Status::kOk) add(reinterpret_cast<std::uintptr_t>(addr), bytes, SegmentAction::kMap);
  return s;
}

device::Status ObservedBackend::unmap(void* addr, std::size_t bytes) {
  const device::Status s = inner_->unmap(addr, bytes);
  // A failed unmap may still have unmapped a prefix on some backends; the backend reports what
  // it did through its own status only, so the span map follows the status (the pool does the
  // same, issue 25 item 1).
  if (s == device::Status::kOk) remove(reinterpret_cast<std::uintptr_t>(addr), bytes, SegmentAction::kUnmap);
  return s;
}

void ObservedBackend::add(std::uintptr_t addr, std::size_t bytes, SegmentAction action) {
  if (bytes == 0) return;
  pieces_[addr] = Piece{bytes, owner_};
  mapped_bytes_ += bytes;
  if (sink_) sink_(SegmentEvent{action, addr, bytes, owner_});
}

void ObservedBackend::remove(std::uintptr_t addr, std::size_t bytes, SegmentAction action) {
  if (bytes == 0) return;
  const std::uintptr_t end = addr + bytes;
  PoolId pool = owner_;
  // The first piece that may overlap [addr, end): the one starting at or before addr.
  auto it = pieces_.upper_bound(addr);
  if (it != pieces_.begin()) --it;
  while (it != pieces_.end() && it->first < end) {
    const std::uintptr_t p_begin = it->first;
    const std::uintptr_t p_end = p_begin + it->second.bytes;
    if (p_end <= addr) {
      ++it;
      continue;
    }
    const Piece piece = it->second;
    pool = piece.pool;
    it = pieces_.erase(it);
    if (p_begin < addr) pieces_[p_begin] = Piece{addr - p_begin, piece.pool};
    if (p_end > end) it = pieces_.emplace(end, Piece{p_end - end, piece.pool}).first;
    const std::uintptr_t cut_begin = p_begin < addr ? addr : p_begin;
    const std::uintptr_t cut_end = p_end < end ? p_end : end;
    mapped_bytes_ -= cut_end - cut_begin;
  }
  if (sink_) sink_(SegmentEvent{action, addr, bytes, pool});
}

std::vector<ObservedBackend::Span> ObservedBackend::spans() const {
  std::vector<Span> out;
  for (const auto& [addr, piece] : pieces_) {
    if (!out.empty() && out.back().addr + out.back().bytes == addr && out.back().pool == piece.pool) {
      out.back().bytes += piece.bytes;
    } else {
      out.push_back(Span{addr, piece.bytes, piece.pool});
    }
  }
  return out;
}

bool ObservedBackend::span_of(std::uintptr_t addr, Span* out) const {
  auto it = pieces_.upper_bound(addr);
  if (it == pieces_.begin()) return false;
  --it;
  if (addr >= it->first + it->second.bytes) return false;
  // Widen over adjacent pieces of the same pool, both ways.
  auto first = it;
  while (first != pieces_.begin()) {
    auto prev = std::prev(first);
    if (prev->first + prev->second.bytes != first->first || prev->second.pool != it->second.pool) break;
    first = prev;
  }
  std::uintptr_t end = it->first + it->second.bytes;
  for (auto next = std::next(it); next != pieces_.end() && next->first == end &&
                                  next->second.pool == it->second.pool;
       ++next) {
    end += next->second.bytes;
  }
  *out = Span{first->first, end - first->first, it->second.pool};
  return true;
}

}  // namespace timeshare
