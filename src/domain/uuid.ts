/** A UUID in its canonical lower-case form, as the service stores and compares them. */
const LOWER_UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function isLowerUuid(value: string): boolean {
  return LOWER_UUID.test(value);
}
