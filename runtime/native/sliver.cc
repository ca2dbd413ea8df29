// libsliver: sliver's native runtime behind the C ABI of sliver.h.
//
// Opens a .sliver artifact (a stored zip of manifest.json, lib.so, golden.npz and an
// optional signature.json), checks it as sliver.runtime.artifact does before any of
// its code is mapped (known entries once each, sizes within the file and the
// manifest, CRC-32s, the manifest's fields, the library's sha256 and ELF
// architecture, the golden arrays against the manifest), then loads the library with
// TVM's C++ runtime (tvm::ffi::Module + the Relax VM in libtvm_runtime.so) and runs it.
// Signatures are not checked here: check them with `sliver run --trusted-key` or
// deploy only artifacts you built.
#include "sliver.h"

#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "npy.hpp"

namespace ffi = tvm::ffi;

namespace {

thread_local std::string g_error;

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------- checksums

uint32_t Crc32(const uint8_t* data, size_t n) {
  static uint32_t table[256];
  static bool ready = [] {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    return true;
  }();
  (void)ready;
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

std::string Sha256Hex(const uint8_t* data, size_t n) {
  static const uint32_t k[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
      0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
      0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
      0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
      0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
      0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
      0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
      0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  auto rotr = [](uint32_t x, int r) { return (x >> r) | (x << (32 - r)); };
  auto block = [&](const uint8_t* p) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = (uint32_t(p[4 * i]) << 24) | (uint32_t(p[4 * i + 1]) << 16) | (uint32_t(p[4 * i + 2]) << 8) | p[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
  };
  size_t full = n / 64 * 64;
  for (size_t i = 0; i < full; i += 64) block(data + i);
  uint8_t tail[128] = {0};
  size_t rest = n - full;
  std::memcpy(tail, data + full, rest);
  tail[rest] = 0x80;
  size_t len = rest + 1 + 8 <= 64 ? 64 : 128;
  uint64_t bits = uint64_t(n) * 8;
  for (int i = 0; i < 8; ++i) tail[len - 1 - i] = uint8_t(bits >> (8 * i));
  for (size_t i = 0; i < len; i += 64) block(tail + i);
  char out[65];
  for (int i = 0; i < 8; ++i) std::snprintf(out + 8 * i, 9, "%08x", h[i]);
  return std::string(out, 64);
}

// ---------------------------------------------------------------- zip (stored entries)

uint32_t U16(const uint8_t* p) { return p[0] | (uint32_t(p[1]) << 8); }
uint32_t U32(const uint8_t* p) { return U16(p) | (U16(p + 2) << 16); }

// The entries of a zip held in [buf, buf + size): name → (data, size).  Only stored
// (uncompressed), unencrypted, non-zip64 plain files are accepted; `allowed(name)` says
// which names may occur (each once); every CRC-32 is checked.
std::map<std::string, std::pair<const uint8_t*, size_t>> ZipEntries(const uint8_t* buf, size_t size,
                                                                   bool (*allowed)(const std::string&),
                                                                   const std::string& what) {
  if (size < 22) throw Error(what + " is not a zip archive (too short)");
  size_t eocd = std::string::npos;
  size_t lowest = size > 22 + 65535 ? size - 22 - 65535 : 0;
  for (size_t i = size - 22 + 1; i-- > lowest;) {
    if (U32(buf + i) == 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd == std::string::npos) throw Error(what + " is not a zip archive (no end record): corrupt or truncated");
  size_t count = U16(buf + eocd + 10), cd_size = U32(buf + eocd + 12), cd_off = U32(buf + eocd + 16);
  if (count > 16) throw Error(what + " holds " + std::to_string(count) + " entries: refused");
  if (cd_off > eocd || cd_size > eocd - cd_off) throw Error(what + ": the central directory is outside the file");
  std::map<std::string, std::pair<const uint8_t*, size_t>> out;
  size_t p = cd_off;
  for (size_t i = 0; i < count; ++i) {
    if (p + 46 > eocd || U32(buf + p) != 0x02014b50) throw Error(what + ": damaged central directory");
    uint32_t flags = U16(buf + p + 8), method = U16(buf + p + 10), crc = U32(buf + p + 16);
    uint32_t csize = U32(buf + p + 20), usize = U32(buf + p + 24);
    size_t nlen = U16(buf + p + 28), xlen = U16(buf + p + 30), clen = U16(buf + p + 32);
    uint32_t attr = U32(buf + p + 38), local = U32(buf + p + 42);
    if (p + 46 + nlen > eocd) throw Error(what + ": damaged central directory");
    std::string name(reinterpret_cast<const char*>(buf + p + 46), nlen);
    p += 46 + nlen + xlen + clen;
    if (!allowed(name)) throw Error(what + ": unexpected entry '" + name + "': refused");
    if (out.count(name)) throw Error(what + ": the entry " + name + " occurs twice (a tampered archive): refused");
    if (flags & 1) throw Error(what + ": entry " + name + " is encrypted: refused");
    uint32_t type = (attr >> 16) & 0170000;
    if (type != 0 && type != 0100000) throw Error(what + ": entry " + name + " is not a plain file: refused");
    if (csize == 0xFFFFFFFFu || usize == 0xFFFFFFFFu || local == 0xFFFFFFFFu)
      throw Error(what + ": entry " + name + " is a zip64 entry, which the native runtime does not read");
    if (method != 0 || csize != usize)
      throw Error(what + ": entry " + name + " is compressed; the native runtime reads stored entries only "
                  "(sliver writes them so)");
    if (local > size || size - local < 30 || U32(buf + local) != 0x04034b50)
      throw Error(what + ": entry " + name + " has no local header: corrupt or truncated");
    size_t data = local + 30 + U16(buf + local + 26) + U16(buf + local + 28);
    if (data > size || usize > size - data) throw Error(what + ": entry " + name + " runs past the end of the file");
    if (Crc32(buf + data, usize) != crc) throw Error(what + ": entry " + name + " fails its CRC-32: damaged");
    out[name] = {buf + data, usize};
  }
  return out;
}

bool ArtifactEntry(const std::string& n) {
  return n == "manifest.json" || n == "lib.so" || n == "golden.npz" || n == "signature.json";
}

bool GoldenEntry(const std::string& n) {
  const char* prefixes[] = {"input_", "output_"};
  for (const char* pre : prefixes) {
    size_t lp = std::strlen(pre);
    if (n.size() > lp + 4 && n.compare(0, lp, pre) == 0 && n.compare(n.size() - 4, 4, ".npy") == 0) {
      for (size_t i = lp; i < n.size() - 4; ++i)
        if (n[i] < '0' || n[i] > '9') return false;
      return n.size() - 4 - lp <= 4;
    }
  }
  return false;
}

// ---------------------------------------------------------------- dtypes

struct DType {
  const char* sliver;  // the manifest's name
  const char* numpy;
  const char* descr;   // .npy descr (little-endian)
  DLDataType dl;
  size_t itemsize;
};

const DType kDTypes[] = {
    {"f64", "float64", "<f8", {kDLFloat, 64, 1}, 8}, {"f32", "float32", "<f4", {kDLFloat, 32, 1}, 4},
    {"f16", "float16", "<f2", {kDLFloat, 16, 1}, 2}, {"i64", "int64", "<i8", {kDLInt, 64, 1}, 8},
    {"i32", "int32", "<i4", {kDLInt, 32, 1}, 4},     {"i16", "int16", "<i2", {kDLInt, 16, 1}, 2},
    {"i8", "int8", "|i1", {kDLInt, 8, 1}, 1},        {"u8", "uint8", "|u1", {kDLUInt, 8, 1}, 1},
    {"bool", "bool", "|b1", {kDLBool, 8, 1}, 1},
};

const DType* FindDType(const std::string& name) {
  for (const DType& d : kDTypes)
    if (name == d.sliver) return &d;
  return nullptr;
}

// ---------------------------------------------------------------- manifest

struct Spec {
  std::string name;
  const DType* dtype;
  std::vector<int64_t> shape;
  size_t bytes;
};

ffi::Any Field(const ffi::json::Object& obj, const char* key, const std::string& where) {
  auto it = obj.find(ffi::String(key));
  if (it == obj.end()) throw Error("the manifest has no " + where + key);
  return (*it).second;
}

std::string Str(const ffi::Any& v, const std::string& what) {
  if (auto s = v.try_cast<ffi::String>()) return std::string(*s);
  throw Error("the manifest's " + what + " is not a string");
}

int64_t Int(const ffi::Any& v, const std::string& what) {
  if (v.type_index() == ffi::TypeIndex::kTVMFFIInt) return v.cast<int64_t>();
  throw Error("the manifest's " + what + " is not a whole number");
}

double Num(const ffi::Any& v, const std::string& what) {
  if (v.type_index() == ffi::TypeIndex::kTVMFFIInt) return static_cast<double>(v.cast<int64_t>());
  if (v.type_index() == ffi::TypeIndex::kTVMFFIFloat) return v.cast<double>();
  throw Error("the manifest's " + what + " is not a number");
}

ffi::json::Object Obj(const ffi::Any& v, const std::string& what) {
  if (auto o = v.try_cast<ffi::json::Object>()) return *o;
  throw Error("the manifest's " + what + " is not an object");
}

ffi::json::Array Arr(const ffi::Any& v, const std::string& what) {
  if (auto a = v.try_cast<ffi::json::Array>()) return *a;
  throw Error("the manifest's " + what + " is not a list");
}

std::vector<Spec> Specs(const ffi::json::Object& m, const char* kind) {
  ffi::json::Array list = Arr(Field(m, kind, ""), kind);
  if (list.size() > 1024) throw Error(std::string("the manifest lists too many ") + kind);
  std::vector<Spec> out;
  for (size_t i = 0; i < list.size(); ++i) {
    std::string where = std::string(kind) + "[" + std::to_string(i) + "].";
    ffi::json::Object s = Obj(list[i], where);
    Spec spec;
    spec.name = Str(Field(s, "name", where), where + "name");
    std::string dt = Str(Field(s, "dtype", where), where + "dtype");
    spec.dtype = FindDType(dt);
    if (!spec.dtype) throw Error("the manifest's " + where + "dtype '" + dt + "' is not a sliver dtype");
    ffi::json::Array shape = Arr(Field(s, "shape", where), where + "shape");
    if (shape.size() > 32) throw Error("the manifest's " + where + "shape has too many dimensions");
    size_t count = 1;
    for (size_t d = 0; d < shape.size(); ++d) {
      int64_t n = Int(shape[d], where + "shape");
      if (n < 0 || n > (int64_t{1} << 40) || (n && count > (size_t{1} << 40) / size_t(n)))
        throw Error("the manifest's " + where + "shape is out of range");
      spec.shape.push_back(n);
      count *= size_t(n);
    }
    spec.bytes = count * spec.dtype->itemsize;
    out.push_back(std::move(spec));
  }
  return out;
}

const char* HostArch() {
#if defined(__aarch64__)
  return "aarch64";
#elif defined(__x86_64__)
  return "x86_64";
#elif defined(__arm__)
  return "arm";
#else
  return "unknown";
#endif
}

std::string ElfArch(const uint8_t* p, size_t n) {
  if (n < 20 || std::memcmp(p, "\x7f" "ELF", 4) != 0) return "not ELF";
  uint32_t machine = p[5] == 1 ? U16(p + 18) : (uint32_t(p[18]) << 8 | p[19]);
  if (machine == 62) return "x86_64";
  if (machine == 183) return "aarch64";
  if (machine == 40) return "arm";
  return "elf-machine-" + std::to_string(machine);
}

// ---------------------------------------------------------------- the model

struct CpuAlloc {
  void AllocData(DLTensor* t) {
    size_t n = ffi::GetDataSize(*t);
    if (posix_memalign(&t->data, 64, n ? n : 64) != 0) throw std::bad_alloc();
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

}  // namespace

struct SliverModel {
  std::string path;
  std::vector<uint8_t> file;  // the whole artifact (golden arrays point into it)
  std::vector<Spec> inputs, outputs;
  std::vector<const uint8_t*> golden_in, golden_out;
  double rtol = 0, atol = 0;
  ffi::Optional<ffi::Module> lib, vm;
  ffi::Optional<ffi::Function> main;
};

namespace {

void ReadGolden(SliverModel* m, const uint8_t* data, size_t size) {
  auto entries = ZipEntries(data, size, GoldenEntry, m->path + ": golden.npz");
  auto take = [&](const std::vector<Spec>& specs, const char* kind, std::vector<const uint8_t*>* out) {
    for (size_t i = 0; i < specs.size(); ++i) {
      std::string key = std::string(kind) + std::to_string(i) + ".npy";
      auto it = entries.find(key);
      if (it == entries.end()) throw Error(m->path + ": golden.npz has no " + key + "; rebuild it with `sliver lower`");
      sliver::npy::Array a;
      try {
        a = sliver::npy::Parse(it->second.first, it->second.second);
      } catch (const std::exception& e) {
        throw Error(m->path + ": golden.npz's " + key + ": " + e.what());
      }
      if (a.descr != specs[i].dtype->descr || a.shape != specs[i].shape)
        throw Error(m->path + ": golden.npz's " + key + " does not match the manifest's " + specs[i].name +
                    " (dtype " + a.descr + ")");
      out->push_back(a.data);
      entries.erase(it);
    }
  };
  take(m->inputs, "input_", &m->golden_in);
  take(m->outputs, "output_", &m->golden_out);
  if (!entries.empty()) throw Error(m->path + ": golden.npz holds unexpected arrays (" + entries.begin()->first + ")");
}

void Open(SliverModel* m) {
  std::ifstream f(m->path, std::ios::binary | std::ios::ate);
  if (!f) throw Error(m->path + ": no such artifact file (or it cannot be read)");
  std::streamoff size = f.tellg();
  if (size < 0 || size > (std::streamoff(8) << 30)) throw Error(m->path + ": not a readable file of at most 8 GiB");
  m->file.resize(static_cast<size_t>(size));
  f.seekg(0);
  if (!f.read(reinterpret_cast<char*>(m->file.data()), size)) throw Error(m->path + ": read error");
  auto entries = ZipEntries(m->file.data(), m->file.size(), ArtifactEntry, m->path);
  for (const char* need : {"manifest.json", "lib.so", "golden.npz"})
    if (!entries.count(need)) throw Error(m->path + ": not a complete sliver artifact (missing " + need + ")");

  auto [mdata, msize] = entries["manifest.json"];
  if (msize > (16u << 20)) throw Error(m->path + ": manifest.json is larger than 16 MB: refused");
  ffi::String err;
  ffi::json::Value root = ffi::json::Parse(ffi::String(reinterpret_cast<const char*>(mdata), msize), &err);
  if (!err.empty()) throw Error(m->path + ": manifest.json is not JSON (" + std::string(err) + ")");
  try {
    ffi::json::Object man = Obj(root, "top level");
    if (Str(Field(man, "format", ""), "format") != "sliver-artifact") throw Error("not a sliver artifact manifest");
    int64_t version = Int(Field(man, "format_version", ""), "format_version");
    if (version == 3)
      throw Error("the artifact has dynamic dimensions (format version 3), which the native runtime does not run "
                  "yet: lower the model with fixed shapes, or run it with sliver's Python runtime");
    if (version < 1 || version > 2)
      throw Error("format version " + std::to_string(version) + " is not one this runtime reads (1 or 2)");
    ffi::json::Object target = Obj(Field(man, "target", ""), "target");
    std::string arch = Str(Field(target, "arch", "target."), "target.arch");
    m->inputs = Specs(man, "inputs");
    m->outputs = Specs(man, "outputs");
    ffi::json::Object lib = Obj(Field(man, "library", ""), "library");
    int64_t lib_bytes = Int(Field(lib, "bytes", "library."), "library.bytes");
    std::string lib_sha = Str(Field(lib, "sha256", "library."), "library.sha256");
    ffi::json::Object golden = Obj(Field(man, "golden", ""), "golden");
    m->rtol = Num(Field(golden, "rtol", "golden."), "golden.rtol");
    m->atol = Num(Field(golden, "atol", "golden."), "golden.atol");
    if (!(m->rtol >= 0 && m->rtol <= 0.1 && m->atol >= 0 && m->atol <= 0.1))
      throw Error("the golden tolerances are outside [0, 0.1]");
    auto gsha = golden.find(ffi::String("sha256"));

    auto [ldata, lsize] = entries["lib.so"];
    if (int64_t(lsize) != lib_bytes)
      throw Error("lib.so holds " + std::to_string(lsize) + " bytes, the manifest says " + std::to_string(lib_bytes) +
                  ": the file was modified or damaged");
    if (Sha256Hex(ldata, lsize) != lib_sha)
      throw Error("the library's sha256 does not match the manifest: the file was modified or damaged; rebuild it "
                  "with `sliver lower`");
    auto [gdata, gsize] = entries["golden.npz"];
    if (gsha != golden.end() && (*gsha).second != nullptr &&
        Sha256Hex(gdata, gsize) != Str((*gsha).second, "golden.sha256"))
      throw Error("golden.npz does not match the manifest's sha256: the file was modified or damaged");
    std::string built = ElfArch(ldata, lsize);
    if (built != arch) throw Error("the library is built for " + built + ", the manifest says " + arch);
    if (arch != HostArch())
      throw Error("compiled for " + arch + " but this machine is " + HostArch() +
                  "; lower the model with --target for this machine");
    ReadGolden(m, gdata, gsize);

    // dlopen needs a file: a private temporary one, removed at once (the mapping stays)
    const char* tmpdir = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/sliver-XXXXXX.so";
    std::vector<char> name(tmpl.begin(), tmpl.end());
    name.push_back('\0');
    int fd = mkstemps(name.data(), 3);
    if (fd < 0) throw Error("cannot create a temporary file in " + tmpl.substr(0, tmpl.rfind('/')));
    size_t done = 0;
    while (done < lsize) {
      ssize_t w = write(fd, ldata + done, lsize - done);
      if (w <= 0) break;
      done += size_t(w);
    }
    close(fd);
    if (done != lsize) {
      unlink(name.data());
      throw Error("cannot write the library to a temporary file (disk full?)");
    }
    try {
      m->lib = ffi::Module::LoadFromFile(ffi::String(name.data()));
    } catch (...) {
      unlink(name.data());
      throw;
    }
    unlink(name.data());
    auto load = m->lib.value()->GetFunction("vm_load_executable", true);
    if (!load) throw Error("the library has no Relax VM executable (vm_load_executable)");
    m->vm = (*load)().cast<ffi::Module>();
    auto init = m->vm.value()->GetFunction("vm_initialization", true);
    if (!init) throw Error("the VM has no vm_initialization");
    (*init)(static_cast<int>(kDLCPU), 0, 2 /* pooled allocator */);
    m->main = m->vm.value()->GetFunction("main", true);
    if (!m->main) throw Error("the VM has no function main");
  } catch (const Error& e) {
    std::string msg = e.what();
    if (msg.compare(0, m->path.size(), m->path) == 0) throw;
    throw Error(m->path + ": " + msg);
  }
}

int Fail(const std::string& msg) {
  g_error = msg;
  return -1;
}

void Info(const Spec& s, SliverTensorInfo* out) {
  out->name = s.name.c_str();
  out->dtype = s.dtype->numpy;
  out->ndim = static_cast<int32_t>(s.shape.size());
  out->shape = s.shape.data();
  out->itemsize = s.dtype->itemsize;
  out->bytes = s.bytes;
}

bool SameType(const DLDataType& a, const DLDataType& b) {
  return a.code == b.code && a.bits == b.bits && a.lanes == b.lanes;
}

}  // namespace

extern "C" {

int sliver_abi_version(void) { return SLIVER_ABI_VERSION; }

const char* sliver_last_error(void) { return g_error.c_str(); }

int sliver_model_open(const char* path, SliverModel** out) {
  if (!out) return Fail("sliver_model_open: out is NULL");
  *out = nullptr;
  if (!path) return Fail("sliver_model_open: path is NULL");
  std::unique_ptr<SliverModel> m;
  try {
    m = std::make_unique<SliverModel>();
    m->path = path;
    Open(m.get());
  } catch (const ffi::Error& e) {
    return Fail(std::string(path) + ": the TVM runtime could not load the library: " + std::string(e.kind()) + ": " +
                std::string(e.message()));
  } catch (const std::exception& e) {
    return Fail(e.what());
  }
  *out = m.release();
  return 0;
}

void sliver_model_close(SliverModel* model) { delete model; }

int sliver_model_num_inputs(const SliverModel* model) { return model ? int(model->inputs.size()) : -1; }
int sliver_model_num_outputs(const SliverModel* model) { return model ? int(model->outputs.size()) : -1; }

int sliver_model_input(const SliverModel* model, int index, SliverTensorInfo* out) {
  if (!model || !out || index < 0 || size_t(index) >= model->inputs.size())
    return Fail("sliver_model_input: no input " + std::to_string(index));
  Info(model->inputs[size_t(index)], out);
  return 0;
}

int sliver_model_output(const SliverModel* model, int index, SliverTensorInfo* out) {
  if (!model || !out || index < 0 || size_t(index) >= model->outputs.size())
    return Fail("sliver_model_output: no output " + std::to_string(index));
  Info(model->outputs[size_t(index)], out);
  return 0;
}

int sliver_model_golden(const SliverModel* model, int is_output, int index, const void** data) {
  if (!model || !data) return Fail("sliver_model_golden: NULL argument");
  const auto& v = is_output ? model->golden_out : model->golden_in;
  if (index < 0 || size_t(index) >= v.size()) return Fail("sliver_model_golden: no array " + std::to_string(index));
  *data = v[size_t(index)];
  return 0;
}

int sliver_model_tolerances(const SliverModel* model, double* rtol, double* atol) {
  if (!model || !rtol || !atol) return Fail("sliver_model_tolerances: NULL argument");
  *rtol = model->rtol;
  *atol = model->atol;
  return 0;
}

int sliver_model_run(SliverModel* model, const void* const* inputs, void* const* outputs) {
  if (!model || !model->main) return Fail("sliver_model_run: the model is not open");
  if ((!inputs && !model->inputs.empty()) || (!outputs && !model->outputs.empty()))
    return Fail("sliver_model_run: NULL inputs or outputs");
  try {
    std::vector<ffi::Tensor> tensors;
    std::vector<ffi::AnyView> args;
    for (size_t i = 0; i < model->inputs.size(); ++i) {
      const Spec& s = model->inputs[i];
      if (!inputs[i] && s.bytes) return Fail("sliver_model_run: input " + s.name + " is NULL");
      ffi::Tensor t = ffi::Tensor::FromNDAlloc(CpuAlloc(), ffi::ShapeView(s.shape.data(), s.shape.size()),
                                               s.dtype->dl, DLDevice{kDLCPU, 0});
      if (s.bytes) std::memcpy(t.GetDLTensorPtr()->data, inputs[i], s.bytes);
      tensors.push_back(std::move(t));
    }
    for (const auto& t : tensors) args.emplace_back(t);
    ffi::Any result;
    model->main.value().CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    std::vector<ffi::Tensor> outs;
    if (auto t = result.try_cast<ffi::Tensor>()) {
      outs.push_back(*t);
    } else if (auto a = result.try_cast<ffi::Array<ffi::Any>>()) {
      for (const ffi::Any& x : *a) {
        auto t2 = x.try_cast<ffi::Tensor>();
        if (!t2) return Fail("the model returned a " + x.GetTypeKey() + " among its outputs, not a tensor");
        outs.push_back(*t2);
      }
    } else {
      return Fail("the model returned a " + result.GetTypeKey() + ", not tensors");
    }
    if (outs.size() != model->outputs.size())
      return Fail("the model returned " + std::to_string(outs.size()) + " outputs, the manifest lists " +
                  std::to_string(model->outputs.size()));
    for (size_t i = 0; i < outs.size(); ++i) {
      const Spec& s = model->outputs[i];
      const DLTensor* t = outs[i].GetDLTensorPtr();
      bool shape_ok = t->ndim == int(s.shape.size());
      for (int d = 0; shape_ok && d < t->ndim; ++d) shape_ok = t->shape[d] == s.shape[size_t(d)];
      if (!shape_ok || !SameType(t->dtype, s.dtype->dl) || t->device.device_type != kDLCPU)
        return Fail("output " + s.name + " does not have the manifest's dtype and shape");
      if (!outs[i].IsContiguous()) return Fail("output " + s.name + " is not a dense array");
      if (s.bytes) {
        if (!outputs[i]) return Fail("sliver_model_run: output " + s.name + " is NULL");
        std::memcpy(outputs[i], static_cast<const uint8_t*>(t->data) + t->byte_offset, s.bytes);
      }
    }
  } catch (const ffi::Error& e) {
    return Fail("the model failed: " + std::string(e.kind()) + ": " + std::string(e.message()));
  } catch (const std::exception& e) {
    return Fail(std::string("the model failed: ") + e.what());
  }
  return 0;
}

int sliver_set_threads(int threads) {
  if (threads < 0) return Fail("sliver_set_threads: give a number of threads >= 0");
  try {
    auto f = ffi::Function::GetGlobal("runtime.config_threadpool");
    if (!f) return Fail("the TVM runtime has no runtime.config_threadpool");
    (*f)(1, threads);
  } catch (const ffi::Error& e) {
    return Fail(std::string(e.message()));
  }
  return 0;
}

}  // extern "C"
