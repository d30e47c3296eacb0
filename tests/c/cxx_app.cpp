// A C++ program on the allocator: operator new/delete (libstdc++ calls
// malloc/free), over-aligned new (aligned_alloc), containers growing with
// realloc-like patterns, exceptions (allocated with malloc by the runtime)
// thrown in many threads, and thread_local objects destroyed at thread exit.
#include <dlfcn.h>
#include <malloc.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

static int failures;
#define CHECK(c)                                                                \
  do {                                                                          \
    if (!(c)) {                                                                 \
      std::fprintf(stderr, "CHECK FAILED %s:%d: %s\n", __FILE__, __LINE__, #c); \
      failures++;                                                               \
    }                                                                           \
  } while (0)

struct alignas(256) Wide {
  unsigned char bytes[256];
};

struct Tracker {
  std::vector<std::string> words;
  ~Tracker() {
    // Runs at thread exit, allocating and freeing on the way.
    std::string joined;
    for (auto &w : words)
      joined += w;
    words.clear();
    words.shrink_to_fit();
  }
};
static thread_local Tracker tracker;

static std::atomic<int> caught{0};

static void worker(int id) {
  std::map<int, std::string> m;
  for (int i = 0; i < 2000; i++) {
    m[i] = std::string(static_cast<size_t>(i % 300), static_cast<char>('a' + i % 26));
    if (i % 3 == 0)
      m.erase(i / 2);
  }
  std::vector<std::unique_ptr<Wide>> wides;
  for (int i = 0; i < 200; i++) {
    wides.emplace_back(new Wide);
    if (reinterpret_cast<uintptr_t>(wides.back().get()) % 256 != 0)
      std::abort();
  }
  for (int i = 0; i < 100; i++) {
    try {
      throw std::runtime_error("thread " + std::to_string(id) + " error " + std::to_string(i));
    } catch (const std::runtime_error &e) {
      if (std::strstr(e.what(), "error") != nullptr)
        caught++;
    }
  }
  for (int i = 0; i < 50; i++)
    tracker.words.push_back(std::to_string(id * 1000 + i));
}

int main() {
  std::setvbuf(stdout, nullptr, _IONBF, 0);
  const char *(*version)() =
      reinterpret_cast<const char *(*)()>(dlsym(RTLD_DEFAULT, "rmalloc_version"));
  std::printf("allocator: %s\n", version ? version() : "glibc");
  const char *req = std::getenv("RMALLOC_TEST_REQUIRE_RMALLOC");
  bool require = req && std::strcmp(req, "1") == 0;
  if (require && !version) {
    std::printf("rmalloc is not loaded\n");
    return 1;
  }
  struct mallinfo2 before = mallinfo2();
  {
    std::vector<std::thread> threads;
    for (int round = 0; round < 5; round++) {
      for (int i = 0; i < 8; i++)
        threads.emplace_back(worker, round * 8 + i);
      for (auto &t : threads)
        t.join();
      threads.clear();
    }
  }
  CHECK(caught == 40 * 100);
  // new[]/delete[] of growing sizes, and a big vector crossing into mmap.
  for (size_t n = 1; n < (1u << 22); n *= 3) {
    auto *a = new char[n];
    std::memset(a, 7, n);
    delete[] a;
  }
  std::vector<int> v;
  for (int i = 0; i < 3000000; i++)
    v.push_back(i);
  long long sum = 0;
  for (int x : v)
    sum += x;
  CHECK(sum == 3000000LL * 2999999 / 2);
  v.clear();
  v.shrink_to_fit();
  struct mallinfo2 after = mallinfo2();
  std::printf("in use before %zu, after %zu\n", before.uordblks + before.hblkhd,
              after.uordblks + after.hblkhd);
  if (require) {
    int (*check)() = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "rmalloc_check_heap"));
    CHECK(check && check() == 0);
  }
  if (failures) {
    std::printf("FAIL: %d\n", failures);
    return 1;
  }
  std::printf("PASS\n");
  return 0;
}
