// The execution model: a pool of OS threads runs the blocks of a grid in parallel; on each OS thread the threads of a
// block are coroutines with their own stacks that run one at a time and switch only at __syncthreads() and at warp
// collectives. A barrier completes when its last participant arrives: that coroutine goes on without switching and the
// others are queued to resume. When the queue is empty and not every coroutine has returned, the block has deadlocked.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "emu_internal.h"

// x86-64 switches with a dozen instructions; ucontext's swapcontext makes a sigprocmask system call per switch, which
// costs ~50x more and dominates kernels that shuffle a lot. Build with -DREPA_EMU_UCONTEXT to use ucontext anyway
// (e.g. under a sanitizer that understands swapcontext).
#if defined(__x86_64__) && !defined(REPA_EMU_UCONTEXT)
#define REPA_EMU_FAST_SWITCH 1
#else
#define REPA_EMU_FAST_SWITCH 0
#endif

namespace repa_emu {
namespace detail {
__thread uint3 tl_thread_idx;
__thread uint3 tl_block_idx;
__thread uint3 tl_block_dim;
__thread uint3 tl_grid_dim;
}  // namespace detail
}  // namespace repa_emu

#if REPA_EMU_FAST_SWITCH
// repa_emu_switch(save, next): saves the callee-saved registers and the SSE/x87 control words on the current stack,
// stores the stack pointer in *save and continues on `next` (a stack left by an earlier switch or made by
// make_stack). repa_emu_trampoline is where a new coroutine starts: it calls r13(r12) and never returns.
extern "C" void repa_emu_switch(void** save, void* next) __attribute__((visibility("hidden")));
extern "C" void repa_emu_trampoline() __attribute__((visibility("hidden")));
asm(R"(
    .pushsection .text
    .globl repa_emu_switch
    .hidden repa_emu_switch
    .type repa_emu_switch, @function
    .p2align 4
repa_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size repa_emu_switch, .-repa_emu_switch

    .globl repa_emu_trampoline
    .hidden repa_emu_trampoline
    .type repa_emu_trampoline, @function
    .p2align 4
repa_emu_trampoline:
    .cfi_startproc
    .cfi_undefined rip
    movq %r12, %rdi
    callq *%r13
    ud2
    .cfi_endproc
    .size repa_emu_trampoline, .-repa_emu_trampoline
    .popsection
)");
#endif

namespace repa_emu {
namespace {

using detail::KernelInfo;

#if REPA_EMU_FAST_SWITCH
using Context = void*;
inline void switch_context(Context* save, Context* next) { repa_emu_switch(save, *next); }
#else
using Context = ucontext_t;
inline void switch_context(Context* save, Context* next) { swapcontext(save, next); }
#endif

// ---- registries ----------------------------------------------------------------------------------------------------
struct Registry {
  std::mutex mutex;
  std::vector<KernelInfo> kernels;
  std::string duplicates;
  std::vector<std::pair<const char*, detail::SharedAddress>> dynamic_shared;
};
Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: registrars of other files may run in any order
  return *r;
}

std::size_t env_size(const char* name, std::size_t fallback, std::size_t lo, std::size_t hi) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == 0) return fallback;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(text, &end, 10);
  if (end == text || *end != 0 || v < lo || v > hi) {
    std::fprintf(stderr, "repa-emu: ignoring %s=%s (expected an integer in [%zu, %zu])\n", name, text, lo, hi);
    return fallback;
  }
  return static_cast<std::size_t>(v);
}

// ---- the coroutines of one block --------------------------------------------------------------------------------------
enum class State : std::uint8_t { Runnable, Running, AtBarrier, AtWarp, Done };

struct Fiber {
  Context context{};
  uint3 index{};
  int tid = 0;
  State state = State::Done;
  // The pending block barrier or warp collective.
  int op = 0;
  unsigned mask = 0;
  int arg = 0;
  int width = 32;
  std::uint64_t value = 0;
  std::uint64_t result = 0;
};

const char* warp_op_name(int op) {
  switch (op) {
    case detail::kWarpSync: return "__syncwarp";
    case detail::kShflIdx: return "__shfl_sync";
    case detail::kShflUp: return "__shfl_up_sync";
    case detail::kShflDown: return "__shfl_down_sync";
    case detail::kShflXor: return "__shfl_xor_sync";
    case detail::kBallot: return "__ballot_sync";
    case detail::kAny: return "__any_sync";
    case detail::kAll: return "__all_sync";
    case detail::kReduceAdd: return "__reduce_add_sync";
    case detail::kReduceMin:
    case detail::kReduceMinSigned: return "__reduce_min_sync";
    case detail::kReduceMax:
    case detail::kReduceMaxSigned: return "__reduce_max_sync";
    case detail::kReduceAnd: return "__reduce_and_sync";
    case detail::kReduceOr: return "__reduce_or_sync";
    default: return "__reduce_xor_sync";
  }
}

std::string format_index(uint3 v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}
std::string hex(unsigned v) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08x", v);
  return text;
}

class BlockRunner;
__thread BlockRunner* tl_runner = nullptr;

class BlockRunner {
 public:
  BlockRunner() : stack_bytes_(env_size("REPA_EMU_STACK_KIB", 64, 16, 65536) * 1024) {}
  ~BlockRunner() {
    for (char* base : stacks_) munmap(base, stack_bytes_ + guard_bytes());
  }

  // Runs block `linear` of the launch to completion; false (with code/message) when it failed.
  bool run(const GridLaunch& launch, std::size_t linear, CUresult& code, std::string& message) {
    launch_ = &launch;
    const uint3 g = launch.grid, b = launch.block;
    detail::tl_block_idx = uint3{static_cast<unsigned>(linear % g.x), static_cast<unsigned>((linear / g.x) % g.y),
                                 static_cast<unsigned>(linear / (static_cast<std::size_t>(g.x) * g.y))};
    detail::tl_block_dim = b;
    detail::tl_grid_dim = g;
    n_ = static_cast<int>(b.x * b.y * b.z);
    if (!ensure_stacks(n_)) {
      code = CUDA_ERROR_OUT_OF_MEMORY;
      message = "could not map " + std::to_string(n_) + " coroutine stacks of " + std::to_string(stack_bytes_) +
                " bytes";
      return false;
    }
    if (launch.shared_bytes > 0) {
      // Shared memory starts undefined on a GPU: NaN bytes make a read before a write visible.
      for (auto& entry : registry().dynamic_shared) std::memset(entry.second(), 0xff, launch.shared_bytes);
    }
    queue_.assign(static_cast<std::size_t>(n_), 0);
    head_ = tail_ = 0;
    queued_ = 0;
    for (int t = 0; t < n_; ++t) {
      Fiber& f = fibers_[static_cast<std::size_t>(t)];
      f.tid = t;
      f.index = uint3{static_cast<unsigned>(t % static_cast<int>(b.x)),
                      static_cast<unsigned>((t / static_cast<int>(b.x)) % static_cast<int>(b.y)),
                      static_cast<unsigned>(t / static_cast<int>(b.x * b.y))};
      f.state = State::Runnable;
      init_context(f, stacks_[static_cast<std::size_t>(t)]);
      push(t);
    }
    std::fill(std::begin(warp_waiting_), std::end(warp_waiting_), 0u);
    done_ = 0;
    arrived_ = 0;
    barrier_count_ = 0;
    failed_ = false;
    tl_runner = this;
    while (!failed_ && queued_ > 0) {
      Fiber& f = fibers_[static_cast<std::size_t>(pop())];
      enter(f);
      switch_context(&scheduler_, &f.context);
    }
    tl_runner = nullptr;
    current_ = nullptr;
    if (!failed_ && done_ != n_) fail(CUDA_ERROR_LAUNCH_FAILED, describe_deadlock());
    if (failed_) {
      code = fail_code_;
      message = fail_message_;
      return false;
    }
    return true;
  }

  int barrier(int op, int predicate) {
    Fiber& me = *current_;
    me.state = State::AtBarrier;
    me.op = op;
    barrier_count_ += predicate != 0;
    if (++arrived_ == n_) {
      const int count = barrier_count_;
      arrived_ = 0;
      barrier_count_ = 0;
      for (int t = 0; t < n_; ++t) {
        Fiber& f = fibers_[static_cast<std::size_t>(t)];
        f.result = static_cast<std::uint64_t>(count);
        if (&f != &me) {
          f.state = State::Runnable;
          push(t);
        }
      }
      me.state = State::Running;
    } else {
      suspend(me);
    }
    const int count = static_cast<int>(me.result);
    switch (op) {
      case detail::kSyncCount: return count;
      case detail::kSyncAnd: return count == n_ ? 1 : 0;
      case detail::kSyncOr: return count > 0 ? 1 : 0;
      default: return 0;
    }
  }

  std::uint64_t warp(int op, unsigned mask, std::uint64_t value, int arg, int width) {
    Fiber& me = *current_;
    const int warp_index = me.tid >> 5, lane = me.tid & 31;
    if ((mask >> lane & 1u) == 0)
      trap(CUDA_ERROR_LAUNCH_FAILED, std::string(warp_op_name(op)) + " with mask " + hex(mask) +
                                         " was called by lane " + std::to_string(lane) + ", which the mask leaves out");
    if (width < 1 || width > 32 || (width & (width - 1)) != 0)
      trap(CUDA_ERROR_LAUNCH_FAILED,
           std::string(warp_op_name(op)) + " with width " + std::to_string(width) + " (must be a power of 2 <= 32)");
    const int lanes_here = std::min(32, n_ - warp_index * 32);
    const unsigned existing = lanes_here == 32 ? 0xffffffffu : (1u << lanes_here) - 1u;
    const unsigned participants = mask & existing;
    me.op = op;
    me.mask = mask;
    me.value = value;
    me.arg = arg;
    me.width = width;
    me.state = State::AtWarp;
    unsigned& waiting = warp_waiting_[warp_index];
    waiting |= 1u << lane;
    if ((waiting & participants) != participants) {
      suspend(me);
      return me.result;
    }
    Fiber* lanes = &fibers_[static_cast<std::size_t>(warp_index) * 32];
    for (unsigned bits = participants; bits != 0; bits &= bits - 1) {
      const Fiber& f = lanes[__builtin_ctz(bits)];
      if (f.op != op || f.mask != mask)
        trap(CUDA_ERROR_LAUNCH_FAILED,
             "lanes of warp " + std::to_string(warp_index) + " met at different warp collectives: lane " +
                 std::to_string(f.tid & 31) + " at " + warp_op_name(f.op) + " (mask " + hex(f.mask) + "), lane " +
                 std::to_string(lane) + " at " + warp_op_name(op) + " (mask " + hex(mask) + ")");
    }
    complete_warp(lanes, participants, op);
    waiting &= ~participants;
    for (unsigned bits = participants & ~(1u << lane); bits != 0; bits &= bits - 1) {
      Fiber& f = lanes[__builtin_ctz(bits)];
      f.state = State::Runnable;
      push(f.tid);
    }
    me.state = State::Running;
    return me.result;
  }

  unsigned active_mask() const {
    const Fiber& me = *current_;
    const int base = me.tid & ~31;
    unsigned mask = 0;
    for (int l = 0; l < 32 && base + l < n_; ++l)
      if (fibers_[static_cast<std::size_t>(base + l)].state != State::Done) mask |= 1u << l;
    return mask;
  }

  [[noreturn]] void trap(CUresult code, const std::string& what) {
    Fiber& me = *current_;
    fail(code, "kernel " + std::string(launch_->kernel->name) + ", block " + format_index(detail::tl_block_idx) +
                   ", thread " + format_index(me.index) + ": " + what);
    me.state = State::Done;
    current_ = nullptr;
    switch_context(&me.context, &scheduler_);
    __builtin_unreachable();  // the scheduler never resumes a failed block
  }

  // Entry of every coroutine: run the kernel, then leave for good.
  static void fiber_main(void* self) {
    auto* runner = static_cast<BlockRunner*>(self);
    const KernelInfo* k = runner->launch_->kernel;
    k->invoke(k->fn, runner->launch_->params);
    Fiber& me = *runner->current_;
    me.state = State::Done;
    ++runner->done_;
    runner->suspend(me);
    __builtin_unreachable();
  }
#if !REPA_EMU_FAST_SWITCH
  static void fiber_main_ucontext() { fiber_main(tl_runner); }
#endif

 private:
  static std::size_t guard_bytes() { return static_cast<std::size_t>(sysconf(_SC_PAGESIZE)); }

  bool ensure_stacks(int count) {
    if (fibers_.size() < static_cast<std::size_t>(count)) fibers_.resize(static_cast<std::size_t>(count));
    while (stacks_.size() < static_cast<std::size_t>(count)) {
      // A PROT_NONE page below each stack turns an overflow into a segfault instead of silent corruption.
      void* base = mmap(nullptr, stack_bytes_ + guard_bytes(), PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (base == MAP_FAILED) return false;
      mprotect(base, guard_bytes(), PROT_NONE);
      stacks_.push_back(static_cast<char*>(base));
    }
    return true;
  }

  void init_context(Fiber& f, char* base) {
    char* bottom = base + guard_bytes();
#if REPA_EMU_FAST_SWITCH
    auto top = reinterpret_cast<std::uintptr_t>(bottom + stack_bytes_) & ~static_cast<std::uintptr_t>(15);
    auto* sp = reinterpret_cast<std::uint64_t*>(top - 80);  // 16-aligned; the frame repa_emu_switch pops
    sp[0] = 0x1f80u | (static_cast<std::uint64_t>(0x037fu) << 32);  // MXCSR and x87 control word defaults
    sp[1] = 0;                                                        // r15
    sp[2] = 0;                                                        // r14
    sp[3] = reinterpret_cast<std::uint64_t>(&BlockRunner::fiber_main);  // r13: function
    sp[4] = reinterpret_cast<std::uint64_t>(this);                      // r12: argument
    sp[5] = 0;                                                          // rbx
    sp[6] = 0;                                                          // rbp
    sp[7] = reinterpret_cast<std::uint64_t>(&repa_emu_trampoline);      // return address
    f.context = sp;
#else
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = bottom;
    f.context.uc_stack.ss_size = stack_bytes_;
    f.context.uc_link = nullptr;
    makecontext(&f.context, &BlockRunner::fiber_main_ucontext, 0);
#endif
  }

  void push(int t) {
    queue_[tail_] = t;
    tail_ = tail_ + 1 == queue_.size() ? 0 : tail_ + 1;
    ++queued_;
  }
  int pop() {
    const int t = queue_[head_];
    head_ = head_ + 1 == queue_.size() ? 0 : head_ + 1;
    --queued_;
    return t;
  }
  void enter(Fiber& f) {
    current_ = &f;
    f.state = State::Running;
    detail::tl_thread_idx = f.index;
  }
  // The current coroutine (whose state says what it waits for) gives way to the next queued one, or to the scheduler
  // when none is queued; returns when someone resumes it.
  void suspend(Fiber& me) {
    if (queued_ > 0 && !failed_) {
      Fiber& next = fibers_[static_cast<std::size_t>(pop())];
      enter(next);
      switch_context(&me.context, &next.context);
    } else {
      current_ = nullptr;
      switch_context(&me.context, &scheduler_);
    }
  }

  void fail(CUresult code, std::string message) {
    if (failed_) return;
    failed_ = true;
    fail_code_ = code;
    fail_message_ = std::move(message);
  }

  static void complete_warp(Fiber* lanes, unsigned participants, int op) {
    std::uint64_t ballot = 0;
    std::uint32_t sum = 0, and_bits = 0xffffffffu, or_bits = 0, xor_bits = 0;
    std::uint32_t umin = 0xffffffffu, umax = 0;
    std::int32_t smin = INT32_MAX, smax = INT32_MIN;
    for (unsigned bits = participants; bits != 0; bits &= bits - 1) {
      const int l = __builtin_ctz(bits);
      const auto v = static_cast<std::uint32_t>(lanes[l].value);
      if (lanes[l].value != 0) ballot |= 1ull << l;
      sum += v;
      and_bits &= v;
      or_bits |= v;
      xor_bits ^= v;
      umin = std::min(umin, v);
      umax = std::max(umax, v);
      smin = std::min(smin, static_cast<std::int32_t>(v));
      smax = std::max(smax, static_cast<std::int32_t>(v));
    }
    for (unsigned bits = participants; bits != 0; bits &= bits - 1) {
      const int l = __builtin_ctz(bits);
      Fiber& f = lanes[l];
      const int w = f.width, offset = f.arg & 31;
      const int first = l & ~(w - 1), last = l | (w - 1);
      int source = l;
      switch (op) {
        case detail::kShflIdx: source = first | (f.arg & (w - 1)); break;
        case detail::kShflUp: source = l - offset >= first ? l - offset : l; break;
        case detail::kShflDown: source = l + offset <= last ? l + offset : l; break;
        case detail::kShflXor: source = (l ^ offset) <= last ? (l ^ offset) : l; break;
        default: break;
      }
      switch (op) {
        case detail::kShflIdx:
        case detail::kShflUp:
        case detail::kShflDown:
        case detail::kShflXor:
          // A source lane outside the collective holds no value here (undefined on a GPU): keep the own value.
          f.result = (participants >> source & 1u) ? lanes[source].value : f.value;
          break;
        case detail::kBallot: f.result = ballot; break;
        case detail::kAny: f.result = ballot != 0; break;
        case detail::kAll: f.result = ballot == participants; break;
        case detail::kReduceAdd: f.result = sum; break;
        case detail::kReduceMin: f.result = umin; break;
        case detail::kReduceMax: f.result = umax; break;
        case detail::kReduceMinSigned: f.result = static_cast<std::uint32_t>(smin); break;
        case detail::kReduceMaxSigned: f.result = static_cast<std::uint32_t>(smax); break;
        case detail::kReduceAnd: f.result = and_bits; break;
        case detail::kReduceOr: f.result = or_bits; break;
        case detail::kReduceXor: f.result = xor_bits; break;
        default: f.result = 0; break;
      }
    }
  }

  std::string describe_deadlock() const {
    int at_barrier = 0, returned = 0;
    int first_barrier = -1, first_returned = -1, first_warp = -1;
    std::string warps;
    for (int t = 0; t < n_; ++t) {
      const Fiber& f = fibers_[static_cast<std::size_t>(t)];
      if (f.state == State::AtBarrier) {
        ++at_barrier;
        if (first_barrier < 0) first_barrier = t;
      } else if (f.state == State::Done) {
        ++returned;
        if (first_returned < 0) first_returned = t;
      } else if (f.state == State::AtWarp && first_warp < 0) {
        first_warp = t;
      }
    }
    int at_warp = 0;
    for (int t = 0; t < n_; ++t)
      if (fibers_[static_cast<std::size_t>(t)].state == State::AtWarp) ++at_warp;
    std::string text = "kernel " + std::string(launch_->kernel->name) + ", block " +
                       format_index(detail::tl_block_idx) + ": deadlock: ";
    std::string parts;
    auto add = [&parts](const std::string& part) { parts += (parts.empty() ? "" : ", ") + part; };
    if (at_barrier > 0)
      add(std::to_string(at_barrier) + " threads wait at __syncthreads() (e.g. thread " +
          format_index(fibers_[static_cast<std::size_t>(first_barrier)].index) + ")");
    if (at_warp > 0) {
      const Fiber& f = fibers_[static_cast<std::size_t>(first_warp)];
      add(std::to_string(at_warp) + " threads wait at warp collectives (e.g. thread " + format_index(f.index) +
          " at " + warp_op_name(f.op) + " with mask " + hex(f.mask) + ")");
    }
    if (returned > 0)
      add(std::to_string(returned) + " threads have returned (e.g. thread " +
          format_index(fibers_[static_cast<std::size_t>(first_returned)].index) + ")");
    return text + parts + "; every thread of the block must reach the same __syncthreads(), and every lane in a " +
           "warp collective's mask the same collective";
  }

  const std::size_t stack_bytes_;
  std::vector<char*> stacks_;
  std::vector<Fiber> fibers_;
  std::vector<int> queue_;
  std::size_t head_ = 0, tail_ = 0;
  int queued_ = 0;
  unsigned warp_waiting_[32] = {};
  Context scheduler_{};
  Fiber* current_ = nullptr;
  const GridLaunch* launch_ = nullptr;
  int n_ = 0, done_ = 0, arrived_ = 0, barrier_count_ = 0;
  bool failed_ = false;
  CUresult fail_code_ = CUDA_SUCCESS;
  std::string fail_message_;
};

BlockRunner& runner_of_current_thread(const char* what) {
  if (tl_runner == nullptr) {
    std::fprintf(stderr, "repa-emu: %s was called outside a kernel launch\n", what);
    std::abort();
  }
  return *tl_runner;
}

// ---- thread pool -------------------------------------------------------------------------------------------------------
class Pool {
 public:
  explicit Pool(int size) : runners_(static_cast<std::size_t>(size)) {
    for (int i = 0; i < size; ++i) threads_.emplace_back([this, i] { work(i); });
  }
  int size() const { return static_cast<int>(threads_.size()); }
  BlockRunner& runner(int worker) { return *runners_[static_cast<std::size_t>(worker)]; }

  void run(std::size_t count, const std::function<bool(std::size_t, int)>& body) {
    if (count == 0) return;
    std::lock_guard<std::mutex> serial(run_mutex_);
    std::unique_lock<std::mutex> lock(mutex_);
    body_ = &body;
    count_ = count;
    next_.store(0);
    stop_.store(false);
    busy_ = size();
    ++generation_;
    start_.notify_all();
    done_.wait(lock, [this] { return busy_ == 0; });
    body_ = nullptr;
  }

 private:
  void work(int index) {
    runners_[static_cast<std::size_t>(index)] = std::make_unique<BlockRunner>();
    std::uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      start_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      const auto* body = body_;
      const std::size_t count = count_;
      lock.unlock();
      while (!stop_.load(std::memory_order_relaxed)) {
        const std::size_t item = next_.fetch_add(1);
        if (item >= count) break;
        if (!(*body)(item, index)) stop_.store(true);
      }
      lock.lock();
      if (--busy_ == 0) done_.notify_all();
    }
  }

  std::vector<std::unique_ptr<BlockRunner>> runners_;
  std::vector<std::thread> threads_;
  std::mutex run_mutex_, mutex_;
  std::condition_variable start_, done_;
  std::uint64_t generation_ = 0;
  int busy_ = 0;
  const std::function<bool(std::size_t, int)>* body_ = nullptr;
  std::size_t count_ = 0;
  std::atomic<std::size_t> next_{0};
  std::atomic<bool> stop_{false};
};

Pool& pool() {
  // Never destroyed: joining workers from a static destructor at process exit could hang on a thread that is gone.
  static Pool* p = new Pool(static_cast<int>(
      env_size("REPA_EMU_THREADS", std::max(1u, std::thread::hardware_concurrency()), 1, 1024)));
  return *p;
}

}  // namespace

// ---- the built-ins kernels call (cuda_emu.h) -----------------------------------------------------------------------------
namespace detail {
int block_barrier(int op, int predicate) { return runner_of_current_thread("__syncthreads()").barrier(op, predicate); }
std::uint64_t warp_collective(int op, unsigned mask, std::uint64_t value, int arg, int width) {
  return runner_of_current_thread(warp_op_name(op)).warp(op, mask, value, arg, width);
}
unsigned active_mask() { return runner_of_current_thread("__activemask()").active_mask(); }
void device_trap(const char* what, const char* file, int line) {
  if (tl_runner == nullptr) {
    std::fprintf(stderr, "repa-emu: %s at %s:%d outside a kernel launch\n", what, file, line);
    std::abort();
  }
  tl_runner->trap(CUDA_ERROR_ASSERT, std::string(what) + " at " + file + ":" + std::to_string(line));
}
long long clock_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void register_kernel(const KernelInfo& info) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  for (const KernelInfo& k : r.kernels) {
    if (std::strcmp(k.name, info.name) == 0) {
      if (k.fn != info.fn) r.duplicates += (r.duplicates.empty() ? "" : ", ") + std::string(info.name);
      return;
    }
  }
  r.kernels.push_back(info);
}
void register_dynamic_shared(const char* name, SharedAddress address) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.dynamic_shared.emplace_back(name, address);
}
}  // namespace detail

// ---- what the runtime files use ---------------------------------------------------------------------------------------
const KernelInfo* find_kernel(const std::string& name) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  for (const KernelInfo& k : r.kernels)
    if (name == k.name) return &k;
  return nullptr;
}
int kernel_count() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  return static_cast<int>(r.kernels.size());
}
const KernelInfo* kernel_at(int index) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  return index >= 0 && index < static_cast<int>(r.kernels.size()) ? &r.kernels[static_cast<std::size_t>(index)]
                                                                    : nullptr;
}
std::string duplicate_kernels() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  return r.duplicates;
}

int worker_count() { return pool().size(); }

void parallel_for(std::size_t count, const std::function<bool(std::size_t, int)>& body) { pool().run(count, body); }

CUresult run_grid(const GridLaunch& launch, std::string& message) {
  const std::size_t blocks = static_cast<std::size_t>(launch.grid.x) * launch.grid.y * launch.grid.z;
  std::mutex failure_mutex;
  CUresult failure = CUDA_SUCCESS;
  Pool& p = pool();
  p.run(blocks, [&](std::size_t block, int worker) {
    CUresult code = CUDA_SUCCESS;
    std::string text;
    if (p.runner(worker).run(launch, block, code, text)) return true;
    std::lock_guard<std::mutex> lock(failure_mutex);
    if (failure == CUDA_SUCCESS) {
      failure = code;
      message = std::move(text);
    }
    return false;
  });
  return failure;
}

}  // namespace repa_emu
