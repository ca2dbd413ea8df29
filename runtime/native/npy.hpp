// npy.hpp: reading and writing numpy's .npy format (versions 1-3), header-only.
// Shared by libsliver (golden data) and the runner (--input / --output-dir).
// Untrusted input: every length is checked against the buffer before use.
#ifndef SLIVER_NPY_HPP_
#define SLIVER_NPY_HPP_

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace sliver {
namespace npy {

struct Array {
  std::string descr;            // e.g. "<f4"
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the buffer parsed
  size_t bytes = 0;
};

inline size_t ItemSize(const std::string& descr) {
  if (descr.size() < 3) return 0;
  size_t n = 0;
  for (size_t i = 2; i < descr.size(); ++i) {
    if (descr[i] < '0' || descr[i] > '9') return 0;
    n = n * 10 + static_cast<size_t>(descr[i] - '0');
    if (n > 16) return 0;
  }
  return n;
}

// The value of 'key' in the header dict (a Python literal), trimmed; throws if absent.
inline std::string DictValue(const std::string& header, const std::string& key) {
  std::string pat = "'" + key + "'";
  size_t k = header.find(pat);
  if (k == std::string::npos) throw std::runtime_error("npy header has no '" + key + "'");
  size_t c = header.find(':', k + pat.size());
  if (c == std::string::npos) throw std::runtime_error("npy header is malformed");
  size_t s = c + 1;
  while (s < header.size() && header[s] == ' ') ++s;
  size_t e = s;
  if (s < header.size() && (header[s] == '(' || header[s] == '\'')) {
    char close = header[s] == '(' ? ')' : '\'';
    e = header.find(close, s + 1);
    if (e == std::string::npos) throw std::runtime_error("npy header is malformed");
    return header.substr(s, e - s + 1);
  }
  while (e < header.size() && header[e] != ',' && header[e] != '}') ++e;
  return header.substr(s, e - s);
}

// Parse an .npy held in [buf, buf + size).  The data must be C-ordered and exactly
// as long as the shape says.
inline Array Parse(const uint8_t* buf, size_t size) {
  static const uint8_t magic[] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (size < 10 || std::memcmp(buf, magic, 6) != 0) throw std::runtime_error("not an .npy file");
  uint8_t major = buf[6];
  size_t header_len, start;
  if (major == 1) {
    header_len = buf[8] | (static_cast<size_t>(buf[9]) << 8);
    start = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) throw std::runtime_error("truncated .npy header");
    header_len = buf[8] | (static_cast<size_t>(buf[9]) << 8) | (static_cast<size_t>(buf[10]) << 16) |
                 (static_cast<size_t>(buf[11]) << 24);
    start = 12;
  } else {
    throw std::runtime_error("unsupported .npy version " + std::to_string(major));
  }
  if (header_len > 1 << 20 || start + header_len > size) throw std::runtime_error("truncated .npy header");
  std::string header(reinterpret_cast<const char*>(buf + start), header_len);
  Array a;
  std::string descr = DictValue(header, "descr");
  if (descr.size() < 2 || descr.front() != '\'' || descr.back() != '\'')
    throw std::runtime_error("npy descr is not a simple dtype (structured arrays are not supported)");
  a.descr = descr.substr(1, descr.size() - 2);
  if (DictValue(header, "fortran_order") != "False")
    throw std::runtime_error("Fortran-ordered .npy arrays are not supported (save a C-ordered array)");
  std::string shape = DictValue(header, "shape");
  if (shape.size() < 2 || shape.front() != '(') throw std::runtime_error("npy shape is malformed");
  size_t count = 1;
  std::string num;
  for (size_t i = 1; i < shape.size(); ++i) {
    char ch = shape[i];
    if (ch >= '0' && ch <= '9') {
      num += ch;
      if (num.size() > 15) throw std::runtime_error("npy shape is too large");
    } else if (ch == ',' || ch == ')') {
      if (!num.empty()) {
        int64_t d = std::stoll(num);
        a.shape.push_back(d);
        if (d != 0 && count > (size_t{1} << 40) / static_cast<size_t>(d))
          throw std::runtime_error("npy shape is too large");
        count *= static_cast<size_t>(d);
        num.clear();
      }
      if (a.shape.size() > 32) throw std::runtime_error("npy array has too many dimensions");
    } else if (ch != ' ' && ch != 'L') {
      throw std::runtime_error("npy shape is malformed");
    }
  }
  size_t item = ItemSize(a.descr);
  if (item == 0) throw std::runtime_error("npy dtype '" + a.descr + "' is not supported");
  a.bytes = count * item;
  a.data = buf + start + header_len;
  if (size - start - header_len != a.bytes)
    throw std::runtime_error("npy data holds " + std::to_string(size - start - header_len) + " bytes, its header says " +
                             std::to_string(a.bytes));
  return a;
}

// An .npy file (version 1) holding `bytes` of data.
inline std::string Write(const std::string& descr, const int64_t* shape, int ndim, const void* data, size_t bytes) {
  std::string dims;
  for (int i = 0; i < ndim; ++i) dims += std::to_string(shape[i]) + (ndim == 1 || i + 1 < ndim ? "," : "");
  if (ndim > 1 && !dims.empty() && dims.back() == ',') dims.pop_back();
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header.size() & 0xFF);
  out += static_cast<char>((header.size() >> 8) & 0xFF);
  out += header;
  out.append(static_cast<const char*>(data), bytes);
  return out;
}

}  // namespace npy
}  // namespace sliver

#endif  // SLIVER_NPY_HPP_
