// The tensor schema: shape × dtype × codec must equal the payload size, checked before use.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "protocol/error.h"
#include "protocol/tensor_codec.h"

namespace cohort::protocol {
namespace {

ErrorCode check_error(const wire::EncodedTensor& t) {
  try {
    (void)check_tensor(t);
  } catch (const ProtocolError& e) {
    return e.code();
  }
  return ErrorCode::io;  // no error
}

TEST(TensorCodec, RawRoundTripKeepsValuesAndShape) {
  std::vector<float> values(2 * 3 * 4);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = 0.5f * static_cast<float>(i) - 3.0f;
  const std::int64_t shape[] = {2, 3, 4};
  const auto t = encode_raw("model.layers.0.mlp.up_proj.weight", wire::DTYPE_F32, shape,
                            ByteView(reinterpret_cast<const std::uint8_t*>(values.data()), values.size() * 4));
  wire::EncodedTensor received;
  ASSERT_TRUE(received.ParseFromString(t.SerializeAsString()));
  const TensorView v = check_tensor(received);
  EXPECT_EQ(v.name, "model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(v.shape, (std::vector<std::int64_t>{2, 3, 4}));
  EXPECT_EQ(v.numel, 24u);
  ASSERT_EQ(v.payload.size(), values.size() * 4);
  std::vector<float> back(values.size());
  std::memcpy(back.data(), v.payload.data(), v.payload.size());
  EXPECT_EQ(back, values);
}

TEST(TensorCodec, PayloadSizeMustMatchShapeTimesDtype) {
  auto t = encode_raw("w", wire::DTYPE_BF16, std::vector<std::int64_t>{3, 5}, Bytes(30));
  EXPECT_EQ(check_error(t), ErrorCode::io);
  t.mutable_payload()->push_back('x');
  EXPECT_EQ(check_error(t), ErrorCode::malformed);
  t.mutable_payload()->resize(29);
  EXPECT_EQ(check_error(t), ErrorCode::malformed);
  t.mutable_payload()->resize(30);
  t.set_dtype(wire::DTYPE_F32);  // same bytes, wrong dtype
  EXPECT_EQ(check_error(t), ErrorCode::malformed);
}

TEST(TensorCodec, RejectsLiesAboutShape) {
  wire::EncodedTensor t;
  t.set_name("w");
  t.set_dtype(wire::DTYPE_F32);
  t.set_codec(wire::CODEC_RAW);
  // Dimensions whose product overflows 64 bits (and would wrap to a tiny payload size).
  t.add_shape(std::uint64_t{1} << 33);
  t.add_shape(std::uint64_t{1} << 33);
  t.set_payload("");
  EXPECT_EQ(check_error(t), ErrorCode::malformed);
  t.clear_shape();
  for (int i = 0; i < 9; ++i) t.add_shape(1);  // rank over the limit
  t.set_payload(std::string(4, '\0'));
  EXPECT_EQ(check_error(t), ErrorCode::malformed);
  t.clear_shape();
  t.add_shape(1);
  EXPECT_EQ(check_error(t), ErrorCode::io);
  t.set_dtype(static_cast<wire::DType>(99));
  EXPECT_EQ(check_error(t), ErrorCode::malformed);
  t.set_dtype(wire::DTYPE_F32);
  t.set_codec(wire::CODEC_UNSPECIFIED);
  EXPECT_EQ(check_error(t), ErrorCode::malformed);
}

TEST(TensorCodec, RejectsBadNames) {
  auto t = encode_raw("ok.name", wire::DTYPE_U8, std::vector<std::int64_t>{2}, Bytes(2));
  EXPECT_EQ(check_error(t), ErrorCode::io);
  for (const std::string& bad : {std::string(""), std::string("a b"), std::string("a\nb"),
                                std::string(300, 'a'), std::string("caf\xc3\xa9")}) {
    t.set_name(bad);
    EXPECT_EQ(check_error(t), ErrorCode::malformed) << bad;
  }
}

TEST(TensorCodec, Fp8BlockCodecSizeIsValuesPlusOneScalePerBlock) {
  // 300 elements in blocks of 128: 300 bytes of E4M3 + 3 FP32 scales.
  EXPECT_EQ(expected_payload_size(wire::DTYPE_F32, 300, wire::CODEC_FP8_E4M3_BLOCK, 128), 300u + 12u);
  EXPECT_EQ(expected_payload_size(wire::DTYPE_F32, 256, wire::CODEC_FP8_E4M3_BLOCK, 128), 256u + 8u);
  EXPECT_EQ(expected_payload_size(wire::DTYPE_F32, 0, wire::CODEC_FP8_E4M3_BLOCK, 128), 0u);
  EXPECT_FALSE(expected_payload_size(wire::DTYPE_F32, 300, wire::CODEC_FP8_E4M3_BLOCK, 0));
  EXPECT_FALSE(expected_payload_size(wire::DTYPE_I32, 300, wire::CODEC_FP8_E4M3_BLOCK, 128));
  EXPECT_FALSE(expected_payload_size(wire::DTYPE_F32, 4, wire::CODEC_RAW, 128));
  wire::EncodedTensor t;
  t.set_name("grad");
  t.set_dtype(wire::DTYPE_F32);
  t.add_shape(10);
  t.add_shape(30);
  t.set_codec(wire::CODEC_FP8_E4M3_BLOCK);
  t.set_block_size(128);
  t.set_payload(std::string(312, '\0'));
  EXPECT_EQ(check_error(t), ErrorCode::io);
  t.set_payload(std::string(311, '\0'));
  EXPECT_EQ(check_error(t), ErrorCode::malformed);
}

}  // namespace
}  // namespace cohort::protocol
