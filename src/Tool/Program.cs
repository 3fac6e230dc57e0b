using System.Globalization;
using DotQuant.Tool;

// Numbers in reports and JSON are culture-invariant whatever the machine's locale. The process
// keeps ICU (no invariant globalization): tokenizers with an NFC normalizer (Qwen) need it.
// Before anything loads libtorch: the same kernels on every AVX2 machine (see Numerics), its OpenMP
// threads wait passively (see ThreadPolicy), and freed tensors stay in malloc's heap instead of going
// back to the kernel (see AllocatorPolicy).
DotQuant.Engine.Torch.Numerics.Apply();
ThreadPolicy.Apply();
AllocatorPolicy.Apply();
CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
return Cli.Run(args, Console.Out, Console.Error);
