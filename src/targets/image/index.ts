/**
 * The offline image target: the base is an ELF executable file (Xen's
 * xen-syms or any program). A dry run: reads come from the file, writes
 * stay in memory, payloads are placed just past the image's highest
 * loaded address (so rel32 reaches them), and hooks cannot run.
 */
import { readFileSync } from 'node:fs';
import { fail, HotstackError, toHotstackError } from '../../errors.js';
import { ElfFile, findBuildId, SymbolIndex, bytesEqual, ET_EXEC, ET_DYN } from '../../elf/index.js';
import type { BaseObject, BaseSymbol, HookResult, Perm, Quiesced, StateStore, Target } from '../../core/target.js';
import type { EngineState } from '../../core/state.js';
import { ImageMemory } from './memory.js';

const PAGE = 4096n;

/** A base object read from an ELF file (bias 0: link-time addresses are the addresses). */
export class ElfBase implements BaseObject {
  readonly path: string;
  readonly buildId: Uint8Array | null;
  readonly bias: bigint;
  private readonly index: SymbolIndex;

  constructor(path: string, elf: ElfFile, bias = 0n, index?: SymbolIndex) {
    this.path = path;
    this.buildId = findBuildId(elf);
    this.bias = bias;
    this.index = index ?? SymbolIndex.fromElf(elf);
  }

  lookup(name: string): BaseSymbol | undefined {
    const s = this.index.lookup(name);
    return s ? { name: s.name, addr: s.value + this.bias, size: s.size, isFunc: s.isFunc } : undefined;
  }

  hasGlobal(name: string): boolean {
    return this.index.hasGlobal(name);
  }
}

class MemoryStore implements StateStore {
  private state: EngineState | null = null;
  load(): EngineState | null {
    return this.state;
  }
  save(s: EngineState): void {
    this.state = s;
  }
}

export class ImageTarget implements Target {
  readonly kind = 'image' as const;
  readonly canRunHooks = false;
  readonly defaultTimeoutMs = 30;
  readonly description: string;
  readonly store: StateStore = new MemoryStore();
  readonly base: ElfBase;
  private readonly mem: ImageMemory;
  private next: bigint;

  constructor(path: string, elf: ElfFile) {
    if (elf.header.type !== ET_EXEC && elf.header.type !== ET_DYN) {
      fail('EINVAL', `${path} is not an executable (ELF type ${elf.header.type}); --image takes a linked ELF such as xen-syms`);
    }
    const loads = elf.loads();
    if (!loads.length) fail('EINVAL', `${path} has no loadable segments`);
    this.description = `image ${path}`;
    this.base = new ElfBase(path, elf);
    this.mem = new ImageMemory(elf);
    const top = loads.reduce((m, s) => (s.vaddr + s.memsz > m ? s.vaddr + s.memsz : m), 0n);
    this.next = ((top + PAGE - 1n) / PAGE) * PAGE + PAGE; // one guard page after the image
  }

  /** Open an ELF file as an offline target. Any problem becomes a HotstackError naming the file. */
  static open(path: string): ImageTarget {
    try {
      return new ImageTarget(path, ElfFile.parse(readFileSync(path), `image ${path}`));
    } catch (e) {
      const err = toHotstackError(e);
      throw new HotstackError(err.errno, `cannot use ${path} as the base image: ${err.message.replace(`image ${path}: `, '')}`, err.offset);
    }
  }

  findBase(buildId: Uint8Array): BaseObject | undefined {
    return this.base.buildId && bytesEqual(this.base.buildId, buildId) ? this.base : undefined;
  }

  bases(): BaseObject[] {
    return [this.base];
  }

  lookupExternal(): bigint | undefined {
    return undefined;
  }

  read(addr: bigint, len: number): Uint8Array {
    return this.mem.read(addr, len);
  }

  write(addr: bigint, data: Uint8Array): void {
    this.mem.write(addr, data);
  }

  allocate(size: number, _perm: Perm): bigint {
    const addr = this.next;
    const rounded = ((BigInt(size) + PAGE - 1n) / PAGE) * PAGE;
    this.mem.map(addr, Number(rounded));
    this.next = addr + rounded;
    return addr;
  }

  free(addr: bigint, size: number): void {
    this.mem.unmap(addr, size);
  }

  quiesce<T>(_busy: unknown, _timeoutMs: number, fn: (q: Quiesced) => T): T {
    return fn({ callHook: () => null });
  }

  callHook(): HookResult {
    return null;
  }
}
